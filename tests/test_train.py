"""The training pass, artifacts and the sweep on tiny configurations (seconds on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_png, read_file

from conftest import TINY_TRAIN
from veil.artifact import load_transform
from veil.errors import InputError, TransformError
from veil.training import TrainConfig, train

TINY = TINY_TRAIN


def _cfg(weights: Path, shared_dir: Path, alpha: float, **kw: object) -> TrainConfig:
    params = TINY | kw
    return TrainConfig(
        weights=str(weights), images=[str(shared_dir / "data/lfw/train")], alpha=alpha, **params
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_pair(weights: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    root = tmp_path_factory.mktemp("transforms")
    out = {}
    for alpha in (0.1, 0.8):
        out[alpha] = root / f"a{alpha}"
        train(_cfg(weights, shared_dir, alpha), out[alpha], progress=False)
    return out


def test_sigma_grows_with_alpha(tiny_pair: dict[float, Path]) -> None:
    low, high = (load_transform(tiny_pair[a]) for a in (0.1, 0.8))
    assert float(high.noise.sigma().mean()) > 1.5 * float(low.noise.sigma().mean())
    assert high.meta["metrics"]["snr_db"] < low.meta["metrics"]["snr_db"]


def test_noise_cap_binds_and_suppression_can_be_turned_off(
    weights: Path, shared_dir: Path, tmp_path: Path
) -> None:
    # alpha 0.9 pushes sigma to its cap; with the cap at 1x the activation std and suppression off,
    # every element stays in the release and none is noisier than the cap.
    train(
        _cfg(weights, shared_dir, 0.9, smax_factor=1.0, suppress_factor=2.0), tmp_path / "t", progress=False
    )
    tr = load_transform(tmp_path / "t")
    act_std = tr.meta["train"]["activation_std"]
    assert tr.noise.smax == pytest.approx(act_std, rel=1e-5)
    assert tr.noise.suppressed_fraction == 0.0
    sigma = tr.noise.sigma()
    assert float(sigma.max()) <= act_std * (1 + 1e-5) and float(sigma.mean()) > 0.5 * act_std


def test_artifact_contents_and_round_trip(tiny_pair: dict[float, Path], weights: Path) -> None:
    path = tiny_pair[0.1]
    meta = json.loads((path / "transform.json").read_text())
    for key in (
        "alpha",
        "smin",
        "smax",
        "model",
        "split",
        "input_size",
        "activation_shape",
        "base_weights_sha256",
        "training_data",
        "metrics",
        "veil_version",
        "tensors_sha256",
    ):
        assert key in meta, key
    assert meta["activation_shape"] == [128, 8, 8] and meta["split"] == "inception3"
    tr = load_transform(path, weights)
    assert tr.tail_state is not None and tr.alpha == 0.1
    log = (path / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 1 + TINY["steps"] // TINY["log_every"]  # type: ignore[operator]


def test_refuses_other_weights_shapes_and_corruption(
    tiny_pair: dict[float, Path], alt_weights: Path, tmp_path: Path
) -> None:
    with pytest.raises(TransformError, match="trained for base weights"):
        load_transform(tiny_pair[0.1], alt_weights)
    with pytest.raises(TransformError, match="made for activations"):
        load_transform(tiny_pair[0.1], activation_shape=(128, 32, 32))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("transform.json", "transform.safetensors"):
        (broken / name).write_bytes((tiny_pair[0.1] / name).read_bytes())
    data = bytearray((broken / "transform.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (broken / "transform.safetensors").write_bytes(bytes(data))
    with pytest.raises(TransformError, match="SHA-256 does not match"):
        load_transform(broken)
    with pytest.raises(TransformError, match="not found"):
        load_transform(tmp_path / "nothing")


def test_pipeline_checks_input_size(tiny_pair: dict[float, Path], weights: Path) -> None:
    from veil.faceboxes.pipeline import load_pipeline

    with pytest.raises(TransformError, match="use --size 256"):
        load_pipeline(weights, tiny_pair[0.1], size=(1024, 1024))
    det = load_pipeline(weights, tiny_pair[0.1])  # "auto": the transform's own input size
    released = det.release(det.preprocess([torch.zeros(3, 100, 100, dtype=torch.uint8)]))
    assert released.shape == (1, 128, 8, 8)


def test_resume_continues_from_checkpoint(weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    cfg = _cfg(weights, shared_dir, 0.3, steps=30)
    train(cfg, out, progress=False, stop_after=20)  # interrupted: checkpoint only
    assert not out.exists() and (tmp_path / ".t.work" / "checkpoint.pt").is_file()
    train(cfg, out, progress=False)
    log = (out / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["step", "10", "20", "30"]
    assert not (tmp_path / ".t.work").exists()


@pytest.mark.slow
def test_torchrun_ddp_gloo(weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    import socket

    out = tmp_path / "ddp"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        "-m",
        "veil.cli.main",
        "train",
        "--weights",
        str(weights),
        "--images",
        str(shared_dir / "data/lfw/train"),
        "--alpha",
        "0.5",
        "--out",
        str(out),
        "--steps",
        "10",
        "--samples",
        "8",
        "--batch-size",
        "2",
        "--size",
        "256",
        "--quiet",
        "--threads",
        "1",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "transform.json").read_text())
    assert meta["train"]["world_size"] == 2
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no work dir or per-rank logs left


def test_sweep_tiny_writes_table_csv_png(weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from veil.cli.main import app

    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--weights",
            str(weights),
            "--images",
            str(shared_dir / "data/lfw/train"),
            "--dataset",
            str(shared_dir / "data/fddb-sample"),
            "--alphas",
            "0.1,0.9",
            "--out",
            str(out),
            "--steps",
            "10",
            "--samples",
            "4",
            "--size",
            "256",
            "--draws",
            "2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| yes | 0.1 |" in table and "| yes | 0.9 |" in table and "| no | n/a |" in table
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0].startswith("alpha,ap,ap_std,ap_retained,mean_sigma,snr_db") and len(rows) == 4
    png = decode_png(read_file(str(out / "accuracy_vs_alpha.png")))
    assert png.shape[0] in (3, 4) and png.shape[1] > 100
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["rows"][2]["mean_sigma"] > sweep["rows"][1]["mean_sigma"]


def test_relative_privacy_loss_rewards_the_cleanest_channel_most() -> None:
    from veil.noise import NoiseTransform, privacy_loss

    noise = NoiseTransform((4, 2, 2), smin=0.0, smax=4.0, granularity="channel", seed=0)
    noise.requires_grad_(False)
    std = noise.sigma().detach().mean(dim=(1, 2), keepdim=True).clone()  # sigma / std = 1 everywhere
    assert abs(float(privacy_loss(noise, std))) < 1e-4
    gains = []
    for c in range(2):  # raise channel c's std: its sigma/std falls, the loss must rise
        s = std.clone()
        s[c] *= 4.0 if c == 0 else 1.5
        gains.append(float(privacy_loss(noise, s)))
    assert gains[0] > gains[1] > 0  # a nearly clean channel costs more than a mildly clean one
    plain = float(privacy_loss(noise))
    assert plain == pytest.approx(-float(torch.log(noise.sigma().mean())))


def test_uniform_distill_weights_count_a_missed_small_face_as_much_as_a_large_one() -> None:
    from veil.training.losses import distillation_loss

    # two face anchors: a large, certain face (clean score 0.95) and a small, doubtful one (0.2)
    t_prob = torch.tensor([[0.95, 0.2, 0.01]])
    t_loc = torch.zeros(1, 3, 4)
    loc = torch.zeros(1, 3, 4)

    def conf_for(p: list[float]) -> torch.Tensor:  # logits whose softmax face probability is p
        q = torch.tensor(p)
        return torch.stack([torch.zeros(3), torch.log(q / (1 - q))], dim=-1)[None]

    lose_small = conf_for([0.95, 0.01, 0.01])  # the noisy model drops the small face
    lose_large = conf_for([0.2, 0.2, 0.01])  # ... or loses confidence on the large one
    for weights in ("score", "uniform"):
        assert float(distillation_loss(loc, conf_for([0.95, 0.2, 0.01]), t_prob, t_loc, weights)) < 1e-6
    score_small = float(distillation_loss(loc, lose_small, t_prob, t_loc, "score"))
    uniform_small = float(distillation_loss(loc, lose_small, t_prob, t_loc, "uniform"))
    assert uniform_small > 1.5 * score_small  # its face term weighs 0.5 instead of 0.2 / 1.15
    ratio_score = score_small / float(distillation_loss(loc, lose_large, t_prob, t_loc, "score"))
    ratio_uniform = uniform_small / float(distillation_loss(loc, lose_large, t_prob, t_loc, "uniform"))
    assert ratio_uniform > ratio_score


def test_unknown_distill_weights_are_refused(weights: Path) -> None:
    from veil.training import TrainConfig

    with pytest.raises(InputError, match="--distill-weights must be score or uniform"):
        TrainConfig(weights=str(weights), images=["x"], alpha=0.1, distill_weights="area")


def test_train_and_tune_refuse_an_unknown_or_missing_device(weights: Path, tmp_path: Path) -> None:
    """``--device``: one line naming the problem, never a traceback from deep inside a run."""
    from conftest import assert_device_refused

    with pytest.raises(InputError, match="--device must be cpu or cuda"):
        TrainConfig(weights=str(weights), images=["x"], alpha=0.1, device="tpu")
    base = ["train", "--weights", str(weights), "--images", str(tmp_path), "--alpha", "0.1"]
    assert_device_refused(*base, "--out", str(tmp_path / "t"))
    tune = ["tune-tail", "-t", str(tmp_path / "src"), "--out", str(tmp_path / "o")]
    assert_device_refused(*tune, "--weights", str(weights))
