"""Privacy audit: metrics, the reconstruction and linkage attacks on a tiny real configuration, the report.

The tiny configuration (256^2 inputs -> 8x8 RDCL activations, 64^2 reconstructions, 160 auxiliary
images, 200 steps) keeps the whole file within the CPU budget; the attacks are real, only smaller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_png
from typer.testing import CliRunner

from conftest import assert_device_refused
from veil.artifact import save_transform
from veil.audit import (
    AttackConfig,
    AuditResult,
    Decoder,
    LinkageConfig,
    NoiseSpec,
    adapt_attacker,
    distance_correlation,
    load_attacker,
    psnr,
    reconstruct,
    roc_auc,
    save_attacker,
    ssim,
    train_attacker,
)
from veil.audit.attack import Attacker, ImageSet, head_activations, score
from veil.audit.linkage import linkage_auc, person_of, train_verifier
from veil.audit.report import TargetResult, write_report
from veil.cli.main import app
from veil.errors import InputError
from veil.imageio import list_images
from veil.noise import NoiseTransform

SIZE, OUT = 256, 64
TINY = AttackConfig(
    input_size=SIZE,
    output_size=OUT,
    width=32,
    steps=200,
    batch_size=16,
    lr=3e-3,
    adapt_steps=80,
    val_images=24,
    eval_every=50,
    max_images=160,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small convolutions gain nothing from a second thread and lose a lot when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- metrics (no data needed) ------------------------------------------------------------------------
def test_ssim_identical_is_one_and_unrelated_is_low() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 64, 64, generator=gen)
    b = torch.rand(4, 3, 64, 64, generator=gen)
    assert torch.allclose(ssim(a, a), torch.ones(4), atol=1e-5)
    assert float(ssim(a, b).max()) < 0.3
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=gen), size=64, mode="bilinear")
    noisy = (smooth + 0.05 * torch.randn(smooth.shape, generator=gen)).clamp(0, 1)
    assert 0.3 < float(ssim(noisy, smooth).mean()) < 0.99  # a slightly noisy copy is in between
    assert float(psnr(a, a).min()) >= 90.0 and float(psnr(a, b).mean()) < 10.0
    with pytest.raises(InputError):
        ssim(a[:, :, :8, :8], b[:, :, :8, :8])  # smaller than the window


def test_distance_correlation_and_auc() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 50, generator=gen)
    assert distance_correlation(x, torch.randn(128, 40, generator=gen)) < 0.15
    assert distance_correlation(x, 3 * x + 1) == pytest.approx(1.0)  # a similarity transform
    assert 0.5 < distance_correlation(x, x[:, :20]) < 0.95  # partly dependent
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.ones(4), labels) == 0.5  # ties count half
    assert person_of(Path("Aaron_Peirsol_0001.jpg")) == "Aaron_Peirsol"
    assert person_of(Path("img_149.jpg")) is None


def test_noise_spec_average_of_k_and_element_size_check() -> None:
    noise = NoiseTransform((4, 2, 2), smax=2.0, granularity="channel", rho_init=0.0)
    spec = NoiseSpec.of(noise, (4, 8, 8))  # per-channel: any spatial size
    x = torch.zeros(4096, 4, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert float(spec.draw(x, gen).std()) == pytest.approx(1.0, rel=0.02)
    assert float(spec.draw(x, gen, k=16).std()) == pytest.approx(0.25, rel=0.02)
    with pytest.raises(InputError, match="per-element"):
        NoiseSpec.of(NoiseTransform((4, 2, 2)), (4, 8, 8))


def test_reconstruct_and_attacker_round_trip(tmp_path: Path) -> None:
    attacker = Attacker(Decoder(128, 4, 32, width=16).eval(), None)
    released = torch.randn(3, 128, 4, 4)
    images = reconstruct(released, attacker)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    loaded = load_attacker(save_attacker(attacker, tmp_path / "a.safetensors"))
    assert torch.equal(reconstruct(released, loaded), images)
    with pytest.raises(InputError):
        reconstruct(torch.randn(1, 64, 4, 4), attacker)


# -- attacks on real data -----------------------------------------------------------------------------
def _channel_noise(sigma: float, shape: tuple[int, ...]) -> NoiseSpec:
    """A per-channel transform with sigma everywhere (smax = 2 sigma, rho = 0)."""
    noise = NoiseTransform(shape, smax=2 * sigma, granularity="channel", rho_init=0.0)
    return NoiseSpec.of(noise, shape)


@pytest.fixture(scope="module")
def lfw(shared_dir: Path, faceboxes: torch.nn.Module) -> dict[str, object]:
    """Clean RDCL activations of 160 auxiliary and 96 held-out LFW photos, and the mean-image floor."""
    from veil.faceboxes.registry import split_model

    lfw_dir = shared_dir / "data" / "lfw"
    aux = ImageSet.load(list_images(lfw_dir / "attack")[: TINY.max_images], OUT, "aux")
    test = ImageSet.load(list_images(lfw_dir / "test")[:96], OUT, "test")
    head = split_model(faceboxes, "rdcl")[0]
    aux_acts = head_activations(head, aux.images, SIZE, progress=False)
    test_acts = head_activations(head, test.images, SIZE, progress=False)
    mean = aux.targets.float().mean(0, keepdim=True).expand_as(test.targets) / 255
    floor = float(ssim(mean, test.targets.float() / 255).mean())
    std = float(aux_acts.std())
    return {
        "aux": aux,
        "test": test,
        "aux_acts": aux_acts,
        "test_acts": test_acts,
        "floor": floor,
        "std": std,
    }


@pytest.fixture(scope="module")
def attackers(lfw: dict) -> dict[str, Attacker]:  # type: ignore[type-arg]
    shape = tuple(lfw["aux_acts"].shape[1:])
    specs = {
        "clean": None,
        "moderate": _channel_noise(lfw["std"], shape),
        "high": _channel_noise(8 * lfw["std"], shape),
    }
    aux = lfw["aux"]
    return {
        name: train_attacker(lfw["aux_acts"], aux.targets, aux.paths, spec, TINY, progress=False)
        for name, spec in specs.items()
    }


def _ssim(attacker: Attacker, lfw: dict, k: int = 1) -> float:  # type: ignore[type-arg]
    return float(score(attacker, lfw["test_acts"], lfw["test"].targets, k=k)[0].mean())


def test_clean_attack_beats_the_floor_clearly(lfw: dict, attackers: dict[str, Attacker]) -> None:  # type: ignore[type-arg]
    clean = _ssim(attackers["clean"], lfw)
    assert clean > lfw["floor"] + 0.15, (clean, lfw["floor"])
    assert attackers["clean"].curve and "val_ssim" in attackers["clean"].curve[-1]


def test_high_noise_reconstructs_worse_than_clean(lfw: dict, attackers: dict[str, Attacker]) -> None:  # type: ignore[type-arg]
    clean, high = _ssim(attackers["clean"], lfw), _ssim(attackers["high"], lfw)
    assert high < clean - 0.15, (high, clean)
    assert high < lfw["floor"] + 0.08  # close to no information


def test_k_query_averaging_helps_the_attacker(lfw: dict, attackers: dict[str, Attacker]) -> None:  # type: ignore[type-arg]
    moderate = attackers["moderate"]
    aux = lfw["aux"]
    k1 = _ssim(moderate, lfw, k=1)
    adapted = adapt_attacker(moderate, 16, lfw["aux_acts"], aux.targets, aux.paths, TINY, progress=False)
    k16 = _ssim(adapted, lfw, k=16)
    assert k16 > k1 + 0.01, (k1, k16)
    assert k1 < _ssim(attackers["clean"], lfw)


def test_linkage_clean_beats_high_noise(lfw: dict) -> None:  # type: ignore[type-arg]
    cfg = LinkageConfig(steps=150)
    aux, test = lfw["aux"], lfw["test"]
    high = _channel_noise(8 * lfw["std"], tuple(lfw["aux_acts"].shape[1:]))
    result = {}
    for name, spec in (("clean", None), ("high", high)):
        verifier = train_verifier(lfw["aux_acts"], aux.paths, spec, cfg, progress=False)
        result[name] = linkage_auc(verifier, lfw["test_acts"], test.paths, spec)
    assert result["clean"] is not None and result["high"] is not None
    assert result["clean"]["pairs_same"] > 20
    assert result["clean"]["auc"] > result["high"]["auc"] + 0.05, result
    assert result["clean"]["auc"] > 0.6


# -- the report ---------------------------------------------------------------------------------------
def _tiny_result() -> AuditResult:
    curve = [{"step": 10.0, "loss": 0.5, "val_ssim": 0.4}, {"step": 20.0, "loss": 0.4, "val_ssim": 0.45}]
    sets = {
        "test": {
            "ssim": {"1": 0.2, "4": 0.3, "16": 0.5},
            "psnr": {"1": 11.0, "4": 12.0, "16": 14.0},
            "snr_db": -3.0,
            "dcor": 0.1,
        }
    }
    clean = TargetResult(
        "clean rdcl @256",
        "clean",
        "rdcl",
        256,
        sets={"test": dict(sets["test"])},
        training={"curve": curve, "converged": True},
    )
    noisy = TargetResult(
        "a05",
        "transform",
        "rdcl",
        256,
        alpha=0.5,
        ap_retained=0.97,
        sets=sets,
        training={"curve": curve, "converged": False},
    )
    floor = {"test": {"ssim": 0.25, "psnr": 11.5, "images": 10.0}}
    return AuditResult({"ks": [1, 4, 16]}, floor, [clean, noisy], ["test"])


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [("original", torch.zeros(2, 3, 16, 16, dtype=torch.uint8))]
    result = _tiny_result()
    write_report(result, tmp_path, rows)
    before = (tmp_path / "report.md").read_text()
    assert "at floor (0.200)" in before  # below the floor is never shown as extra privacy
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if Path(dst).name == "report.md":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    result.notes.append("a change")
    with pytest.raises(OSError, match="disk full"):
        write_report(result, tmp_path, rows)
    assert (tmp_path / "report.md").read_text() == before  # the old report is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_cli_audit_end_to_end(shared_dir: Path, weights: Path, tmp_path: Path) -> None:
    lfw = shared_dir / "data" / "lfw"
    noise = NoiseTransform((128, SIZE // 32, SIZE // 32), smax=2.0, granularity="channel", rho_init=0.0)
    noise.requires_grad_(False)
    tdir = save_transform(
        tmp_path / "a05",
        noise,
        {"model": "faceboxes", "split": "rdcl", "alpha": 0.5, "input_size": [SIZE, SIZE]},
    )
    sweep = tmp_path / "sweep.json"
    sweep.write_text(
        json.dumps(
            {
                "rows": [
                    {"alpha": None, "ap": 0.9, "retained": 1.0, "transform": None},
                    {"alpha": 0.5, "ap": 0.85, "retained": 0.944, "transform": str(tdir)},
                ]
            }
        )
    )
    out = tmp_path / "report"
    args = [
        "audit",
        "--weights",
        str(weights),
        "--transform",
        str(tdir),
        "--aux",
        str(lfw / "attack"),
        "--eval",
        str(lfw / "test"),
        "--eval",
        str(shared_dir / "data" / "fddb-sample"),
        "--out",
        str(out),
        "--sweep",
        str(sweep),
        "--steps",
        "30",
        "--adapt-steps",
        "10",
        "--linkage-steps",
        "20",
        "--size",
        str(SIZE),
        "--output-size",
        "32",
        "--width",
        "16",
        "--max-images",
        "48",
        "--max-eval",
        "24",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("reconstructions.png", "tradeoff.png", "training_curves.png"):
        image = decode_png(torch.frombuffer(bytearray((out / name).read_bytes()), dtype=torch.uint8))
        assert image.shape[0] in (3, 4) and image.shape[1] > 50 and image.shape[2] > 50
    metrics = json.loads((out / "metrics.json").read_text())
    assert [t["kind"] for t in metrics["targets"]] == ["clean", "transform"]
    noisy = metrics["targets"][1]
    assert noisy["ap_retained"] == pytest.approx(0.944) and noisy["alpha"] == 0.5
    assert set(noisy["sets"]) == {"lfw/test", "data/fddb-sample"}
    assert set(noisy["sets"]["lfw/test"]["ssim"]) == {"1", "4", "16"}
    assert "lfw/test" in noisy["linkage"]
    report = (out / "report.md").read_text()
    assert "Threat model" in report and "a05" in report and "94.4%" in report
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_per_element_transform_is_refused_at_another_size(weights: Path, tmp_path: Path) -> None:
    from veil.audit import run_audit

    noise = NoiseTransform((128, 8, 8)).requires_grad_(False)
    tdir = save_transform(tmp_path / "el", noise, {"split": "rdcl", "alpha": 0.3, "input_size": [256, 256]})
    with pytest.raises(InputError, match="per-element"):
        run_audit(weights, [tdir], tmp_path, [tmp_path], tmp_path / "out", size=512, progress=False)


def test_sweep_rows_join_by_directory_then_name_then_unique_alpha(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from veil.audit.faceboxes import _join_sweep

    rows = [
        {"alpha": 0.8, "retained": 0.4, "transform": "faceboxes-inception3-alpha0.8"},
        {"alpha": 0.8, "retained": 0.3, "transform": "faceboxes-rdcl-alpha0.8"},
        {"alpha": 0.2, "retained": 0.97, "transform": None},
    ]
    rdcl = SimpleNamespace(path=tmp_path / "faceboxes-rdcl-alpha0.8", alpha=0.8)
    assert _join_sweep(rows, rdcl)["retained"] == 0.3  # type: ignore[arg-type,index]
    other = SimpleNamespace(path=tmp_path / "mine-0.8", alpha=0.8)
    assert _join_sweep(rows, other) is None  # type: ignore[arg-type]  # two rows with alpha 0.8: no guess
    low = SimpleNamespace(path=tmp_path / "mine-0.2", alpha=0.2)
    assert _join_sweep(rows, low)["retained"] == 0.97  # type: ignore[arg-type,index]


def test_cli_audit_refuses_an_unknown_or_missing_device(weights: Path, tmp_path: Path) -> None:
    base = ["audit", "--weights", str(weights), "--aux", str(tmp_path), "--eval", str(tmp_path)]
    assert_device_refused(*base, "--out", str(tmp_path / "r"))
