"""`veil audit` on a transform made by veil.protect for a torchvision ResNet-18 (issue 33).

A real ResNet-18 (10 classes, random init, seeded) is protected at ``layer2`` for 64x64 inputs with
ImageNet normalisation recorded, fitted a few steps on the seven FDDB sample photos the package ships, and
saved. Its factory lives in a module written to ``tmp_path`` (``--model toy_models_audit:plain`` plus the
state dict as ``--weights``), as a user's own code would. The attack images are crops of the shipped
photos: auxiliary crops from five photos, evaluation crops from the two others. The attack is real and
tiny (5 steps, width 16); the wire is 128x8x8 and the decoder reads exactly that.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import decode_png, encode_png

import veil
from conftest import run_veil
from veil.audit.decoder import Decoder, plan
from veil.audit.inputs import check_normalisation, default_output_size, prepare
from veil.audit.store import load_attacker
from veil.errors import InputError
from veil.imageio import list_images, load_image

SAMPLES = Path(veil.__file__).resolve().parent / "assets" / "fddb-sample" / "originalPics"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FACTORIES = '''
import torch
from torch import nn
from torchvision.models import resnet18


def resnet():
    """The protected ResNet-18 (seed 0)."""
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


def plain():
    """The same architecture, other (seed 5) weights: --weights loads the right ones as a state dict."""
    torch.manual_seed(5)
    return resnet18(num_classes=10).eval()


def other():
    """Another ResNet-18 (other weights, 7 classes): not the model the transform was made for."""
    torch.manual_seed(1)
    return resnet18(num_classes=7).eval()


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
'''


def _crops(image: torch.Tensor, count: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``count`` random square crops (40-90 % of the short side) resized to 96x96."""
    _, h, w = image.shape
    out = []
    for _ in range(count):
        side = int(min(h, w) * (0.4 + 0.5 * float(torch.rand((), generator=gen))))
        y = int(torch.randint(0, h - side + 1, (), generator=gen))
        x = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = image[:, y : y + side, x : x + side].unsqueeze(0).float()
        out.append(F.interpolate(crop, size=(96, 96), mode="bilinear", antialias=True)[0].round().byte())
    return out


def _write(images: list[torch.Tensor], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        # no "_0001"-style suffix: every crop is its own "person", so the attacker keeps a validation slice
        (folder / f"crop{i:03d}.png").write_bytes(encode_png(img).numpy().tobytes())
    return folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small convolutions gain nothing from a second thread and lose a lot when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("audit_generic")
    (root / "toy_models_audit.py").write_text(FACTORIES)
    spec = importlib.util.spec_from_file_location("toy_models_audit", root / "toy_models_audit.py")
    assert spec is not None and spec.loader is not None
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    photos = [load_image(p) for p in list_images(SAMPLES)]
    assert len(photos) == 7
    gen = torch.Generator().manual_seed(0)
    aux = _write([c for img in photos[:5] for c in _crops(img, 5, gen)], root / "aux")
    held = _write([c for img in photos[5:] for c in _crops(img, 4, gen)], root / "eval")

    model = mod.resnet()
    torch.save(model.state_dict(), root / "r18.pt")
    p = veil.protect(
        model, split="layer2", alpha=0.5, example=torch.randn(1, 3, 64, 64), normalisation=IMAGENET
    )
    batch = prepare(photos, p.meta["input_spec"], (64, 64))
    p.fit([batch] * 3, steps=3, progress=False)
    tdir = p.save(root / "r18-layer2")

    net = mod.mlp()
    q = veil.protect(net, split="1", alpha=0.5, example=torch.randn(4, 30))
    q.fit([torch.randn(8, 30)] * 2, steps=2, progress=False)
    return {
        "root": root,
        "mod": mod,
        "aux": aux,
        "eval": held,
        "transform": tdir,
        "mlp": q.save(root / "mlp"),
        "protected": p,
        "batch": batch,
    }


def _audit(setup: dict[str, Any], *extra: str, transform: Path | None = None) -> Any:
    return run_veil(
        "audit",
        "--transform",
        str(transform or setup["transform"]),
        "--aux",
        str(setup["aux"]),
        "--eval",
        str(setup["eval"]),
        *extra,
        "--quiet",
        "--threads",
        "1",  # small convolutions on a shared CPU: one thread is ~10x faster than contended ones
        timeout=300,
    )


def _tiny(setup: dict[str, Any]) -> tuple[str, ...]:
    """The toy model with its weights and a tiny attacker budget (5 steps, width 16, 25 images)."""
    weights = str(setup["root"] / "r18.pt")
    return ("--model", "toy_models_audit:plain", "--weights", weights, "--steps", "5", "--adapt-steps", "2",
            "--width", "16", "--max-images", "25")  # fmt: skip


def _one_line_error(result: Any) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


def test_cli_audits_a_resnet_transform(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(setup["root"]))
    out = setup["root"] / "report"
    result = _audit(
        setup,
        *_tiny(setup),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "r18-layer2" in report and "128×8×8" in report and "3×64×64" in report
    assert "ResNet" in report and "layer2" in report and "0.50" in report
    assert "Linkage: not applicable" in report  # the crops' names carry no identity
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["kind"] == "generic" and metrics["config"]["output_size"] == 64
    kinds = [(t["kind"], t["name"]) for t in metrics["targets"]]
    assert kinds == [("clean", "clean layer2 @64x64"), ("transform", "r18-layer2")]
    for t in metrics["targets"]:
        assert t["wire_shape"] == [128, 8, 8] and t["input_shape"] == [3, 64, 64] and t["split"] == "layer2"
        assert t["decoder"] == {
            "in_channels": 128,
            "in_hw": [8, 8],
            "out_size": 64,
            "fold": 1,
            "body": None,
            "stages": 3,
        }
        m = t["sets"][metrics["eval_sets"][0]]
        assert m["images"] == 8 and set(m["ssim"]) == {"1", "4", "16"}
        for k in ("1", "4", "16"):
            assert math.isfinite(m["ssim"][k]) and -1 <= m["ssim"][k] <= 1
            assert math.isfinite(m["psnr"][k]) and m["psnr"][k] > 0
    noisy = metrics["targets"][1]
    assert noisy["alpha"] == 0.5 and noisy["model"] == "ResNet" and noisy["granularity"] == "channel"
    assert (
        noisy["release_sha256"]
        == json.loads((setup["transform"] / "transform.json").read_text())["release_sha256"]
    )
    held = metrics["eval_sets"][0]
    assert held.endswith("/eval") and held in report
    assert math.isfinite(noisy["sets"][held]["snr_db"])
    assert metrics["targets"][0]["sets"][held]["snr_db"] is None  # clean: nothing added
    for name in ("reconstructions.png", "tradeoff.png", "training_curves.png"):
        image = decode_png(torch.frombuffer(bytearray((out / name).read_bytes()), dtype=torch.uint8))
        assert image.shape[0] in (3, 4) and image.shape[1] > 50 and image.shape[2] > 50
    attacker = load_attacker(out / "attackers" / "r18-layer2.safetensors")
    assert (attacker.decoder.in_channels, attacker.decoder.in_hw, attacker.decoder.out_size) == (
        128,
        (8, 8),
        64,
    )
    assert attacker.noise is not None and attacker.noise.sigma.shape == (128, 1, 1)


def test_cli_audits_per_channel_at_another_size_and_clean_split(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--size 96: a 128x12x12 wire (and layer1's 64x24x24), which the square rule cannot decode to 64²."""
    monkeypatch.setenv("PYTHONPATH", str(setup["root"]))
    out = setup["root"] / "report96"
    args = [
        "--model",
        "toy_models_audit:resnet",
        "--size",
        "96",
        "--clean-split",
        "layer1",
        "--out",
        str(out),
    ]
    result = _audit(setup, *args, "--steps", "3", "--adapt-steps", "0", "--width", "8", "--max-images", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    got = {t["name"]: (t["input_size"], t["wire_shape"], t["decoder"]) for t in metrics["targets"]}
    wire12 = {"in_channels": 128, "in_hw": [12, 12], "out_size": 64, "fold": 1, "body": 16, "stages": 2}
    wire24 = {"in_channels": 64, "in_hw": [24, 24], "out_size": 64, "fold": 2, "body": 16, "stages": 2}
    assert got == {
        "clean layer2 @96x96": (96, [128, 12, 12], wire12),
        "clean layer1 @96x96": (96, [64, 24, 24], wire24),
        "r18-layer2": (96, [128, 12, 12], wire12),
    }
    held = metrics["eval_sets"][0]
    for t in metrics["targets"]:
        assert math.isfinite(t["sets"][held]["ssim"]["1"]) and math.isfinite(t["sets"][held]["psnr"]["1"])
    assert "resize to 16²" in (out / "report.md").read_text()


def test_another_model_is_refused_in_one_line(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(setup["root"]))
    line = _one_line_error(
        _audit(setup, "--model", "toy_models_audit:other", "--out", str(setup["root"] / "o"))
    )
    assert "made for model" in line and "r18-layer2" in line
    line = _one_line_error(_audit(setup, "--out", str(setup["root"] / "o")))  # no --model at all
    assert "--model" in line and "ResNet" in line
    shipped = next(
        Path(veil.__file__).resolve().parent.rglob("faceboxes-inception3-alpha0.5/transform.json")
    ).parent
    mixed = _audit(
        setup,
        "--transform",
        str(shipped),
        "--model",
        "toy_models_audit:resnet",
        "--out",
        str(setup["root"] / "o"),
    )
    line = _one_line_error(mixed)
    assert "veil.protect" in line and "FaceBoxes" in line and "separate runs" in line


def test_a_vector_transform_takes_rows_not_images(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (B, D) -> (B, C) transform goes to the vector audit (tests/test_tabular.py), which reads rows."""
    monkeypatch.setenv("PYTHONPATH", str(setup["root"]))
    result = _audit(
        setup, "--model", "toy_models_audit:mlp", "--out", str(setup["root"] / "m"), transform=setup["mlp"]
    )
    line = _one_line_error(result)
    assert "a vector audit reads rows from a .npy (N, D) or .csv file" in line


def test_released_noise_is_what_the_attacker_draws(setup: dict[str, Any]) -> None:
    """The audit's noise model (NoiseSpec of p.noise) has the distribution of p.release's fresh noise."""
    from veil.audit.attack import NoiseSpec

    p, x = setup["protected"].eval(), setup["batch"]
    with torch.no_grad():
        clean = p.head(x)
    spec = NoiseSpec.of(p.noise, clean.shape[1:])
    real = torch.stack([p.release(x) for _ in range(40)])  # fresh OS-entropy noise each call
    drawn = torch.stack([spec.draw(clean, torch.Generator().manual_seed(i)) for i in range(40)])
    keep = spec.keep.flatten()
    mu, sigma = spec.mu.flatten()[keep], spec.sigma.flatten()[keep]
    n = real[:, :, 0].numel()  # samples per channel
    for released in (real, drawn):
        eps = (released - clean).transpose(0, 2).flatten(1)[keep]  # [kept channels, n]
        assert bool(((eps.mean(1) - mu).abs() < 5 * sigma / n**0.5).all())
        assert bool(((eps.std(1) - sigma).abs() < 5 * sigma / (2 * n) ** 0.5).all())
        gone = released.transpose(0, 2).flatten(1)[~keep]  # suppressed channels carry mu alone
        assert torch.equal(gone, spec.mu.flatten()[~keep, None].expand_as(gone))


def test_decoder_sizes_itself_from_any_wire() -> None:
    # FaceBoxes' numbers stay: 128x32x32 -> space-to-depth 2 -> 16x16 -> 3 stages -> 128
    assert plan((32, 32), 128) == (2, None, 3)
    # ResNet-18 layer2 at 64: 8x8 (no resize); at 224: 28x28 -> fold 2 -> 14 -> resize to 16
    assert plan((8, 8), 64) == (1, None, 3) and plan((28, 28), 128) == (2, 16, 3)
    assert plan((7, 12), 128) == (1, 16, 3) and plan((1, 1), 32) == (1, None, 5)
    for c, hw, out in ((128, (28, 28), 128), (64, (7, 12), 32), (5, (1, 1), 16), (3, (17, 17), 48)):
        d = Decoder(c, hw, out, width=8).eval()
        with torch.no_grad():
            y = d(torch.randn(2, c, *hw))
        assert y.shape == (2, 3, out, out) and bool(((y >= 0) & (y <= 1)).all())
    shipped = load_attacker(
        Path(veil.__file__).resolve().parent
        / "assets"
        / "attackers"
        / "faceboxes-inception3-alpha0.12.safetensors"
    )
    assert (shipped.decoder.in_channels, shipped.decoder.in_size, shipped.decoder.out_size) == (128, 32, 128)


def test_input_spec_normalisation() -> None:
    img = torch.full((3, 10, 20), 255, dtype=torch.uint8)
    spec = {"shape": [3, 8, 8], "dtype": "float32", "normalisation": IMAGENET}
    x = prepare([img], spec, (8, 8))
    want = (1 - torch.tensor(IMAGENET["mean"])) / torch.tensor(IMAGENET["std"])
    assert x.shape == (1, 3, 8, 8) and torch.allclose(x[0, :, 0, 0], want)
    grey = prepare([img], {"shape": [1, 4, 4], "dtype": "float32", "normalisation": None}, (4, 4))
    assert grey.shape == (1, 1, 4, 4) and torch.allclose(grey, torch.ones(1))
    assert check_normalisation({"mean": [104.0, 117.0, 123.0]}, 3)[2] == 1.0  # 0-255 statistics
    assert check_normalisation(None, 3) == (None, None, 1 / 255)
    # what `veil train --model` records: scale first, then mean/std (either may be null)
    recorded = {"scale": 1 / 255, "resize": [4, 4], "mean": None, "std": [0.5]}
    x = prepare([img], {"shape": [3, 4, 4], "dtype": "float32", "normalisation": recorded}, (4, 4))
    assert torch.allclose(x, torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(InputError, match="understands"):
        check_normalisation({"mean": [0.5], "offset": 2}, 3)
    with pytest.raises(InputError, match="scale must be"):
        check_normalisation({"scale": -1.0}, 3)
    with pytest.raises(InputError, match="std must be > 0"):
        check_normalisation({"mean": [0.5], "std": [0.0]}, 3)
    assert default_output_size((64, 64), 128) == 64 and default_output_size((224, 300), 128) == 128


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_cli_runs_every_attack_and_keeps_the_metrics_schema(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--attacks all --ks 1,4,16,64: decoder, rMLE, hybrid, dFIL, fresh vs sticky, a page per target."""
    import jsonschema

    monkeypatch.setenv("PYTHONPATH", str(setup["root"]))
    out = setup["root"] / "report-all"
    result = _audit(
        setup,
        *_tiny(setup),
        "--attacks",
        "all",
        "--ks",
        "1,4,16,64",
        "--inversion-steps",
        "4",
        "--inversion-images",
        "4",
        "--fisher-projections",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    schema = json.loads((Path(veil.__file__).parent / "audit" / "metrics.schema.json").read_text())
    jsonschema.validate(metrics, schema)
    assert metrics["schema"] == "veil-audit/2" and metrics["config"]["ks"] == [1, 4, 16, 64]
    assert metrics["config"]["attacks"] == ["decoder", "rmle", "hybrid", "fisher", "sticky"]
    assert metrics["config"]["whitebox"]["steps"] == 4 and metrics["config"]["whitebox"]["images"] == 4
    held = metrics["eval_sets"][0]
    clean, noisy = metrics["targets"]
    wb = noisy["sets"][held]["whitebox"]
    assert wb["images"] == 4
    for attack in ("decoder", "rmle", "hybrid"):
        assert set(wb[attack]["ssim"]) == {"1", "16"}, attack
        assert all(-1 <= v <= 1 for v in wb[attack]["ssim"].values())
    fisher = wb["fisher"]  # Sigma = sigma^2 / K: K releases carry K times the information
    assert fisher["dfil"]["1"] > 0 and fisher["dfil"]["16"] == pytest.approx(16 * fisher["dfil"]["1"])
    assert fisher["mse_bound"]["1"] >= 1 / fisher["dfil"]["1"] * (1 - 1e-6)  # mean of 1/dFIL >= 1/mean
    assert clean["sets"][held]["whitebox"]["fisher"] is None  # no noise: the information is unbounded
    assert set(clean["sets"][held]["whitebox"]["rmle"]["ssim"]) == {"1"}  # clean: nothing to average
    rep = noisy["sets"][held]["repeats"]
    assert rep["ks"] == [1, 4, 16, 64] and set(noisy["sets"][held]["ssim"]) == {"1", "4", "16", "64"}
    sticky = list(rep["sticky"]["ssim"].values())
    assert max(sticky) - min(sticky) < 1e-6  # identical repeats: averaging gains nothing
    # sticky repeats are identical tensors: always linked; fresh ones differ only by noise, so they link
    # better than chance (on this toy's 8 images even perfectly, at times; test_audit_repeats.py: real faces)
    assert rep["linkage"]["sticky_auc"] == 1.0 and 0.5 <= rep["linkage"]["fresh_auc"] <= 1.0
    assert rep["fresh"]["ssim"]["1"] == pytest.approx(noisy["sets"][held]["ssim"]["1"])
    assert "repeats" not in clean["sets"][held]  # clean activations have no noise to repeat
    page = (out / "targets" / "r18-layer2.md").read_text()
    for text in ("White-box inversion", "dFIL", "fresh against sticky", "Strongest attack", "r18-layer2.png"):
        assert text in page, text
    assert "(targets/r18-layer2.md)" in (out / "report.md").read_text()
    picture = decode_png(
        torch.frombuffer(bytearray((out / "targets" / "r18-layer2.png").read_bytes()), dtype=torch.uint8)
    )
    assert picture.shape[1] > 100


def test_cli_refuses_white_box_budgets_without_the_attack(setup: dict[str, Any]) -> None:
    result = _audit(setup, "--inversion-steps", "3", "--out", str(setup["root"] / "never"))
    line = _one_line_error(result)
    assert "--attacks" in line and not (setup["root"] / "never").exists()
