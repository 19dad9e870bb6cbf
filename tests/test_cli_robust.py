"""Bad command lines: one ``error:`` line, exit code 2, no traceback, nothing written (issue 32, item 10)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, run_veil
from veil.errors import CheckpointError, InputError


def refused(proc: subprocess.CompletedProcess[str], *says: str) -> None:
    """Exit code 2 and exactly one stderr line that contains every one of ``says``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in says:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["eval", "--dataset", "d", "--threshold", "nan"], "--threshold"),
        (["eval", "--dataset", "d", "--batch-size", "0"], "--batch-size"),
        (["eval", "--dataset", "d", "--draws", "-1"], "--draws"),
        (["eval", "--dataset", "d", "--alpha", "inf"], "--alpha"),
        (["eval", "--dataset", "d", "--num-shards", "0"], "--num-shards"),
        (["train", "--alpha", "0.2", "--steps", "-1"], "--steps"),
        (["train", "--alpha", "0.2", "--batch-size", "0"], "--batch-size"),
        (["train", "--alpha", "0.2", "--lr-tail", "nan"], "--lr-tail"),
        (["train", "--alpha", "0.2", "--lr-head", "0"], "--lr-head"),
        (["train", "--alpha", "nan"], "--alpha"),
        (["train", "--alpha", "0.2", "--suppress-max", "1.5"], "--suppress-max"),
        (["train", "--alpha", "0.2", "--size", "1000"], "--size"),
        (["sweep", "--dataset", "d", "--draws", "0"], "--draws"),
        (["tune-tail", "-t", "t", "--lr-tail", "-1e-4"], "--lr-tail"),
        (["detect", "x.jpg", "--threshold", "1.5"], "--threshold"),
        (["detect", "x.jpg", "--resize", "inf"], "--resize"),
        (["detect", "x.jpg", "--size", "33"], "--size"),
        (["detect", "x.jpg", "--tiles", "0"], "--tiles"),
        (["audit", "--aux", "a", "--eval", "e", "--output-size", "4"], "--output-size"),
        (["export", "triton", "--max-batch-size", "0"], "--max-batch-size"),
        (["serve", "--http-port", "70000"], "--http-port"),
        (["serve", "--max-batch-size", "0"], "--max-batch-size"),
        (["serve", "--instances", "-1"], "--instances"),
        (["serve", "--threads", "-1"], "--threads"),
        (["k8s", "render", "--gpus", "-1"], "--gpus"),
        (["--max-image-mp", "nan", "models"], "--max-image-mp"),
    ],
)
def test_numbers_out_of_range_are_one_line(args: list[str], option: str, tmp_path: Path) -> None:
    """Each refusal names the option; a command that writes is given an --out that must stay absent."""
    writes = args[0] in ("train", "sweep", "tune-tail", "detect", "audit", "export")
    out = ["--out", str(tmp_path / "out")] if writes else []
    refused(run_veil(*args, *out), option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["detect", "x.jpg", "--out", "{blocked}/out"], "--out"),
        (["train", "--alpha", "0.2", "--images", "i", "--out", "{blocked}/out"], "--out"),
        (["tune-tail", "-t", "t", "--out", "{blocked}/out"], "--out"),
        (["sweep", "-i", "i", "--dataset", "d", "--out", "{blocked}/out"], "--out"),
        (["audit", "--aux", "a", "--eval", "e", "--out", "{blocked}/out"], "--out"),
        (["export", "triton", "--out", "{blocked}/repo"], "--out"),
        (["k8s", "render", "--out", "{blocked}/k8s"], "--out"),
        (["eval", "--dataset", "d", "--json", "{blocked}/r.json"], "--json"),
        (["eval", "merge", "p.json", "--json", "{blocked}/r.json"], "--json"),
        (["eval", "--dataset", "d", "--json", "{folder}"], "--json"),
        (["k8s", "render", "--out", "{blocked}"], "--out"),
        (["demo", "--out", "{blocked}/pictures"], "--out"),
        (["serve", "--triton-log", "{blocked}/triton.log"], "--triton-log"),
        (["serve", "--triton-log", "{folder}"], "--triton-log"),
        (["serve", "--record", "{blocked}/acts"], "--record"),
    ],
)
def test_unwritable_outputs_are_refused_up_front(args: list[str], option: str, tmp_path: Path) -> None:
    """An --out under a regular file (unwritable even for root): 'cannot write', before any work."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    argv = [a.format(blocked=blocked, folder=folder) for a in args]
    refused(run_veil(*argv), f"cannot write {option}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert blocked.read_text() == "not a folder" and list(folder.iterdir()) == []


def test_usage_errors_are_one_line() -> None:
    refused(run_veil("train", "--no-such-option"), "No such option", "veil train --help")
    refused(run_veil("no-such-command"), "No such command")
    assert run_veil().returncode == 2  # no command: the help text, as before


@pytest.mark.parametrize(
    "head",
    [b"0,1,2\n3,4,5\n", b"hello world\n", b"\x89PNG\r\n\x1a\n" + bytes(64)],
    ids=["csv-starting-with-pickle-POP", "text", "png"],
)
def test_a_non_checkpoint_weights_file_is_one_line(head: bytes, tmp_path: Path) -> None:
    """``0`` is pickle's POP opcode: torch.load said 'IndexError: pop from empty list' for such a file."""
    from veil.models.checkpoint import read_state_dict

    bad = tmp_path / "weights.pth"
    bad.write_bytes(head)
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(one is written by torch.save"):
        read_state_dict(bad)
    out = tmp_path / "repo"
    refused(run_veil("export", "triton", "--weights", str(bad), "--out", str(out)), str(bad), "torch.save")
    assert not out.exists()


def test_a_corrupt_pickle_checkpoint_is_one_line(tmp_path: Path) -> None:
    """Bytes that start like torch.save's legacy pickle but are garbage: 'corrupt', not a KeyError."""
    from veil.models.checkpoint import read_state_dict

    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x80\x02" + b"h\x65" + bytes(32))  # protocol 2, then BINGET 101 from an empty memo
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(bad)


def test_train_config_refuses_what_the_options_refuse(weights: Path) -> None:
    from veil.training import TrainConfig

    base = {"weights": str(weights), "images": ["i"], "alpha": 0.2}
    for field, value, says in [
        ("steps", -1, "--steps must be >= 1"),
        ("batch_size", 0, "--batch-size must be >= 1"),
        ("lr_tail", math.nan, "--lr-tail must be a finite number > 0"),
        ("label_weight", math.nan, "--label-weight must be a finite number > 0"),
        ("adversary_weight", math.inf, "--adversary-weight must be a finite number >= 0"),
        ("alpha", math.nan, "--alpha must be a finite number >= 0 and < 1"),
        ("input_size", 100, "--size must be a multiple of 32"),
    ]:
        with pytest.raises(InputError, match=says):
            TrainConfig(**(base | {field: value}))  # type: ignore[arg-type]


def test_a_failed_train_leaves_nothing_behind(weights: Path, tmp_path: Path) -> None:
    """Images that are not there: the run fails in its cache, and no .work folder (or parent) stays."""
    out = tmp_path / "nested" / "deeper" / "t"
    args = ["train", "--weights", str(weights), "--images", str(tmp_path / "none"), "--alpha", "0.2"]
    refused(run_veil(*args, "--size", "256", "--quiet", "--out", str(out)), "image folder not found")
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_train_leaves_nothing_behind(weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    """A noise cap of 1e38 x the activations' std overflows to a NaN loss: refused before any checkpoint."""
    from veil.training import TrainConfig, train

    cfg = TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        alpha=0.5,
        granularity="channel",
        smax_factor=1e38,
        **(TINY_TRAIN | {"steps": 10, "samples": 4}),  # type: ignore[arg-type]
    )
    with pytest.raises(InputError, match=r"training diverged at step 10 \(loss nan\): nothing was written"):
        train(cfg, tmp_path / "sub" / "t", progress=False)
    assert list(tmp_path.iterdir()) == []
