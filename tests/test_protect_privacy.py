"""The privacy options for any image model: the online attacker, train_head, server-side tail tuning.

A torchvision ResNet-18 (10 classes, seeded) split at ``layer2`` on 64x64 crops of the 7 FDDB sample photos
veil ships (ImageNet normalisation recorded), plus an MLP for the vector-wire adapter. CPU, one thread
(the machine is shared: more threads only contend).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import veil
from veil.artifact import load_transform, state_fingerprint
from veil.audit.online import OnlineAttacker
from veil.errors import InputError, TransformError
from veil.imageio import list_images, load_image
from veil.noise import NoiseTransform
from veil.protection import Protected, tune_tail
from veil.protection.adapter import AdaptedTail, ConvAdapter, LinearAdapter, adapted, adapter_spec
from veil.protection.objectives import regression_loss

SAMPLES = Path(veil.__file__).parent / "assets" / "fddb-sample" / "originalPics"
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
STEPS = 10


def seeded_resnet18(weights: str | None = None) -> nn.Module:
    """The model under test (also the CLI's ``--model test_protect_privacy:seeded_resnet18``)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images() -> Tensor:
    """The 7 sample photos: shorter side to 64, centre 64x64 crop, ImageNet-normalised."""
    out = []
    for path in list_images(SAMPLES):
        img = load_image(path).float().div(255.0)[None]
        h, w = img.shape[-2:]
        scale = 64 / min(h, w)
        img = F.interpolate(
            img, size=(max(64, round(h * scale)), max(64, round(w * scale))), antialias=True, mode="bilinear"
        )
        top, left = (img.shape[-2] - 64) // 2, (img.shape[-1] - 64) // 2
        out.append(img[0, :, top : top + 64, left : left + 64])
    x = torch.stack(out)
    assert x.shape == (7, 3, 64, 64)
    return (x - torch.tensor(NORM["mean"]).view(1, 3, 1, 1)) / torch.tensor(NORM["std"]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return seeded_resnet18()


def batches(x: Tensor) -> list[Tensor]:
    return [x[:4], x[3:]]


def protected(model: nn.Module, x: Tensor) -> Protected:
    """``veil.protect`` at layer2 with a seeded noise (the same draws every call), so fits compare."""
    p = veil.protect(model, split="layer2", alpha=0.5, example=x[:2], normalisation=NORM)
    n = p.noise
    p.noise = NoiseTransform(n.shape, smax=n.smax, granularity="channel", feature_axis=n.feature_axis, seed=0)
    return p


def fit(p: Protected, x: Tensor, steps: int, **options: object) -> dict[str, object]:
    return p.fit(batches(x), steps=steps, lr_tail=1e-3, suppress_from=1.0, progress=False, **options)


@pytest.fixture(scope="module")
def mean_fit(model: nn.Module, images: Tensor) -> Protected:
    p = protected(model, images)
    fit(p, images, STEPS)
    return p


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the train_head test leaves its transform for the Triton test."""
    return tmp_path_factory.mktemp("head") / "trained"


@pytest.fixture(scope="module")
def source(mean_fit: Protected, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mean_fit.save(tmp_path_factory.mktemp("privacy") / "r18")


# -- (a) the online attacker -------------------------------------------------------------------------
def test_adversarial_fit_moves_sigma_otherwise_and_resumes_the_game(
    model: nn.Module, images: Tensor, mean_fit: Protected, tmp_path: Path
) -> None:
    p = protected(model, images)
    attacker = OnlineAttacker.for_protected(p, images)
    assert (attacker.wire, attacker.input_hw, attacker.output_size) == ((128, 8, 8), (64, 64), 64)
    result = fit(p, images, STEPS, objective="adversarial", attacker=attacker)
    assert result["objective"] == "adversarial" and mean_fit.meta["fit"]["objective"] == "mean"
    # the attacker's loss relative to the mean image: logged every step, finite, and it learns something
    ratios = [row[4] for row in p.history]
    assert len(ratios) == STEPS and all(0.0 < r < 2.0 for r in ratios), ratios
    assert min(ratios[-3:]) < 1.0 and result["attack_vs_floor_last"] == pytest.approx(sum(ratios[-5:]) / 5)
    assert all(row[4] != row[4] for row in mean_fit.history)  # NaN: no attacker
    # same data, same noise draws, same tail updates (two mean fits end bit for bit equal): only the
    # attacker's term differs, and once the decoder beats the mean image it pushes the noise
    moved = (p.noise.rho - mean_fit.noise.rho).abs().max().item()
    assert moved > 1e-4, moved
    release = p.release(images[:4]).requires_grad_(True)
    attacker.privacy_term(release, images[:4]).backward()
    assert release.grad is not None and release.grad.abs().sum() > 0

    # a fit stopped at step 6 and resumed with a fresh attacker ends where the straight run ended
    ckpt = tmp_path / "fit.ckpt"
    first = protected(model, images)
    fit(
        first,
        images,
        6,
        objective="adversarial",
        attacker=OnlineAttacker.for_protected(first, images),
        checkpoint=ckpt,
    )
    again = protected(model, images)
    fresh = OnlineAttacker.for_protected(again, images)
    res = fit(again, images, STEPS, objective="adversarial", attacker=fresh, checkpoint=ckpt)
    assert res["resumed_at"] == 6 and [row[0] for row in again.history] == list(range(1, STEPS + 1))
    assert fresh.seen == attacker.seen == STEPS * 4  # every target counted once, resumed included
    for key, value in attacker.decoder.state_dict().items():
        assert torch.allclose(fresh.decoder.state_dict()[key].float(), value.float(), atol=1e-5), key
    assert torch.allclose(again.noise.rho, p.noise.rho, atol=1e-5)

    with pytest.raises(InputError, match="pass the same attacker"):  # not silently a mean fit from here
        fit(protected(model, images), images, STEPS + 1, checkpoint=ckpt)
    with pytest.raises(InputError, match="sized"):  # another attacker cannot take over this game
        fit(
            protected(model, images),
            images,
            STEPS + 1,
            checkpoint=ckpt,
            attacker=OnlineAttacker.for_protected(p, images, output_size=32),
        )


def test_adversarial_refusals(model: nn.Module, images: Tensor) -> None:
    p = protected(model, images)
    with pytest.raises(InputError, match="needs attacker="):
        fit(p, images, 1, objective="adversarial")
    with pytest.raises(InputError, match="objective must be"):
        fit(p, images, 1, objective="loudest")
    with pytest.raises(InputError, match="must have step"):
        fit(p, images, 1, objective="adversarial", attacker=object())  # type: ignore[arg-type]
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    vec = veil.protect(net, split="1", alpha=0.5, example=torch.randn(4, 30))
    with pytest.raises(InputError, match="image wires"):
        OnlineAttacker.for_protected(vec)


# -- (b) train_head ----------------------------------------------------------------------------------
def test_train_head_trains_the_head_and_the_transform_carries_it(
    model: nn.Module, images: Tensor, tmp_path: Path, head_dir: Path
) -> None:
    p = protected(model, images)
    untrained = state_fingerprint(p.head)
    before = {k: v.clone() for k, v in p.head.state_dict().items()}
    fit(p, images, 4, train_head=True, lr_head=1e-3)
    after = p.head.state_dict()
    conv = [k for k in before if k.endswith("conv1.weight")]
    assert conv and all(not torch.equal(before[k], after[k]) for k in conv)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # batch norm stayed in eval

    path = p.save(tmp_path / "head")
    p.save(head_dir)  # for the Triton test below
    meta = json.loads((path / "transform.json").read_text())
    assert meta["head_trained"] and meta["has_head"]
    assert meta["head_sha256"] == state_fingerprint(p.head) != untrained
    q = veil.load(path, model)
    assert q.head_trained and state_fingerprint(q.head) == meta["head_sha256"]
    r = p.release(images)
    assert torch.equal(q.head(images), p.head(images))
    assert torch.equal(q.tail(r), p.tail(r))
    with pytest.raises(TransformError, match="made for model"):
        veil.load(path, nn.Sequential(*list(seeded_resnet18().children())[:-1]))

    # head and online attacker together: the attacker's term reaches the head through the release
    attacker = OnlineAttacker.for_protected(p, images)
    fit(p, images, 2, train_head=True, lr_head=1e-3, attacker=attacker)
    assert all(0.0 < row[4] < 2.0 for row in p.history[-2:]) and attacker.seen == 8


# -- (c) server-side tail tuning with an adapter ------------------------------------------------------
def test_tail_tuning_keeps_the_release_and_brings_the_outputs_closer(
    model: nn.Module, images: Tensor, source: Path, tmp_path: Path
) -> None:
    out = tune_tail(source, model, batches(images), tmp_path / "tuned", steps=20, adapter=32, progress=False)
    a, b = load_transform(source), load_transform(out)
    assert a.meta["release_sha256"] == b.meta["release_sha256"]
    assert b.meta["tail_tuning"]["source_release_sha256"] == a.meta["release_sha256"]
    assert b.meta["tail_adapter"] == {"kind": "conv1x1", "features": 128, "hidden": 32, "axis": 1}
    assert b.meta["fit"] == a.meta["fit"]  # the source's own record stays

    src, tuned = veil.load(source, model), veil.load(out, model)
    assert isinstance(tuned.tail, AdaptedTail) and isinstance(tuned.tail.adapter, ConvAdapter)
    r = src.release(images)  # one release, both tails
    with torch.no_grad():
        clean = model(images)
        before = float(regression_loss(src.tail(r), clean))
        after = float(regression_loss(tuned.tail(r), clean))
        script = torch.jit.load(str(out / "tail.pt"))(r)
    assert after < 0.8 * before, (before, after)
    assert torch.allclose(script, tuned.tail(r), atol=1e-5)  # tail.pt is the adapted tail

    result = veil.export_triton(out, tmp_path / "repo")
    manifest = json.loads((tmp_path / "repo" / "veil-export.json").read_text())
    assert manifest["transform"]["release_sha256"] == a.meta["release_sha256"]
    assert result.max_abs_diff and max(result.max_abs_diff.values()) < 1e-4

    with pytest.raises(InputError, match="already has a tail adapter"):
        tune_tail(out, model, batches(images), tmp_path / "again", steps=1, adapter=8, progress=False)
    with pytest.raises(InputError, match="must differ"):
        tune_tail(source, model, batches(images), source, steps=1, progress=False)


def test_vector_wire_gets_a_linear_adapter(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    xs = [torch.randn(16, 30, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    p = veil.protect(net, split="1", alpha=0.5, example=xs[0])
    spec = adapter_spec(p.meta["wire_spec"], 16)
    assert spec == {"kind": "linear", "features": 64, "hidden": 16, "axis": 1}
    r = p.release(xs[0])
    assert torch.equal(adapted(copy.deepcopy(p.tail), spec)(r), p.tail(r))  # a fresh adapter: identity
    source = p.save(tmp_path / "mlp")
    out = tune_tail(source, net, xs, tmp_path / "tuned", steps=40, adapter=16, lr_tail=1e-3, progress=False)
    tuned = veil.load(out, net)
    assert isinstance(tuned.tail, AdaptedTail) and isinstance(tuned.tail.adapter, LinearAdapter)
    assert load_transform(out).meta["release_sha256"] == load_transform(source).meta["release_sha256"]
    x = torch.cat(xs)
    r = p.release(x)
    with torch.no_grad():
        before, after = (
            float(regression_loss(p.tail(r), net(x))),
            float(regression_loss(tuned.tail(r), net(x))),
        )
    assert after < 0.8 * before, (before, after)
    with pytest.raises(InputError, match="hidden channels"):
        adapter_spec(p.meta["wire_spec"], 0)


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_tune_tail_dispatches_a_protect_transform(source: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )

    def veil_cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", "from veil.cli.main import main; main()", "tune-tail", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    common = ["--transform", str(source), "--data", str(SAMPLES), "--steps", "3", "--quiet", "--threads", "1"]
    run = veil_cli(
        *common,
        "--out",
        str(tmp_path / "cli"),
        "--model",
        "test_protect_privacy:seeded_resnet18",
        "--adapter",
        "8",
        "--batch-size",
        "4",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "release unchanged" in run.stdout
    meta = load_transform(tmp_path / "cli").meta
    assert meta["release_sha256"] == load_transform(source).meta["release_sha256"]
    assert meta["tail_adapter"]["hidden"] == 8 and meta["tail_tuning"]["steps"] == 3


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "--model"),  # the default model is FaceBoxes: a veil.protect transform names its own
        (["--model", "test_protect_privacy:seeded_resnet18", "--labels", "x"], "--labels: FaceBoxes options"),
        (["--model", "test_protect_privacy:seeded_resnet18", "--adapter", "4"], "pass --data"),
    ],
)
def test_cli_tune_tail_refusals_are_one_line(
    source: Path,
    tmp_path: Path,
    extra: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from veil.cli.main import main

    data = [] if "--adapter" in extra else ["--data", str(SAMPLES)]
    argv = ["veil", "tune-tail", "--transform", str(source), "--out", str(tmp_path / "o"), *data, *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_tuned_head_trained_transform_through_a_real_triton(
    model: nn.Module, images: Tensor, tmp_path: Path, head_dir: Path
) -> None:
    """train_head + tail tuning with an adapter, served by ``veil serve --transform`` (Triton, 127.0.0.1)."""
    from veil.client import VeilClient
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    if not head_dir.is_dir():
        pytest.skip("needs test_train_head_trains_the_head_and_the_transform_carries_it's transform")
    out = tune_tail(head_dir, model, batches(images), tmp_path / "tuned", steps=3, adapter=16, progress=False)
    q = veil.load(out, model)
    assert q.head_trained and isinstance(q.tail, AdaptedTail)
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, instances=1)
    with VeilServer.from_transform(out, config).start() as server:
        client = VeilClient(server.endpoints.http, "http", transform=q, timeout=30)
        got = client.infer(images)
        sent = client.last_sent
        client.close()
    assert sent is not None and sent.shape == (7, 128, 8, 8)
    with torch.no_grad():
        want = q.tail(torch.from_numpy(sent))
    assert isinstance(got, Tensor) and got.shape == (7, 10)
    assert (got - want).abs().max().item() < 1e-4
