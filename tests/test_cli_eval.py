"""`veil eval` / `veil detect` end to end on real data, with the reference design's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import run_veil
from veil.cli.main import app

runner = CliRunner()


def _eval(*args: str) -> str:
    result = runner.invoke(app, ["eval", "--quiet", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_fddb_sample_prints_tr_log_and_json(fddb_sample: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "fddb.json"
    text = _eval("--dataset", str(fddb_sample), "--weights", str(weights), "--json", str(out))
    lines = text.strip().splitlines()
    assert "==================== Results ====================" in lines
    assert any(line.startswith("FDDB-fold-1 Val AP: ") for line in lines)
    assert any(line.startswith("FDDB-fold-6 Val AP: ") for line in lines)
    data = json.loads(out.read_text())
    assert set(data) >= {"folds", "average_ap", "map", "pooled_ap", "roc", "images", "faces", "seconds"}
    assert data["images"] == 7 and data["faces"] == 11
    assert data["pooled_ap"] >= 0.90  # reference FaceBoxes.PyTorch: 0.9091 (10 of 11 faces)
    assert data["average_ap"] == pytest.approx((data["folds"]["1"] + data["folds"]["6"]) / 2)
    assert f"mAP: {data['map']!r}" in lines
    assert 0.0 < data["roc"]["tpr_at_1000"]["discrete"] <= 1.0


def test_eval_folds_option(fddb_sample: Path, weights: Path) -> None:
    text = _eval("--dataset", str(fddb_sample), "--weights", str(weights), "--folds", "6")
    assert "FDDB-fold-6 Val AP" in text and "FDDB-fold-1 Val AP" not in text


def test_widerface_sample_matches_reference(widerface_sample: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    _eval("--dataset", str(widerface_sample), "--weights", str(weights), "--json", str(out))
    data = json.loads(out.read_text())
    assert data["images"] == 10
    assert abs(data["pooled_ap"] - 0.2586) <= 0.01  # reference at 1024x1024, all boxes


@pytest.mark.slow
def test_mask_scenes_matches_reference(mask_scenes: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    _eval("--dataset", str(mask_scenes), "--weights", str(weights), "--json", str(out))
    data = json.loads(out.read_text())
    assert data["images"] == 552 and data["faces"] == 2128
    assert abs(data["pooled_ap"] - 0.4845) <= 0.01  # reference at 1024x1024


def test_detect_writes_png_and_json(fddb_sample: Path, weights: Path, tmp_path: Path) -> None:
    img = fddb_sample / "originalPics/2002/07/19/big/img_160.jpg"
    result = runner.invoke(app, ["detect", str(img), "--weights", str(weights), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "img_160.json").read_text())
    assert len(record["boxes"]) == 1 and record["boxes"][0][4] > 0.9
    assert (tmp_path / "img_160.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--dataset", "/nonexistent", "--weights", "x.pth"], "error: "),
        (["eval", "--weights", "x.pth"], "missing --dataset"),
        (["detect", "/nonexistent.jpg", "--weights", "/nonexistent.pth"], "weights file not found"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str) -> None:
    proc = run_veil(*args)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in proc.stderr


def test_mask_scenes_own_scale_matches_reference(mask_scenes: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    _eval("--dataset", str(mask_scenes), "--weights", str(weights), "--resize", "1", "--json", str(out))
    assert abs(json.loads(out.read_text())["pooled_ap"] - 0.3395) <= 0.01  # reference at the image's scale


def test_sharded_then_merged_equals_unsharded(
    fddb_sample: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Indexed Job path: two shards (index from JOB_COMPLETION_INDEX), merged, equal one run exactly."""
    whole = tmp_path / "whole.json"
    _eval("--dataset", str(fddb_sample), "--weights", str(weights), "--json", str(whole))
    parts = []
    for index in (0, 1):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        part = tmp_path / f"part-{index}.json"
        _eval(
            "--dataset", str(fddb_sample), "--weights", str(weights), "--num-shards", "2", "--json", str(part)
        )
        parts.append(part)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    shard_images = [json.loads(p.read_text())["images"] for p in parts]
    assert sorted(shard_images) == [1, 6]  # fold 1 (1 image) and fold 6 (6 images) on different pods
    merged = tmp_path / "merged.json"
    result = runner.invoke(app, ["eval", "merge", *map(str, parts), "--json", str(merged)])
    assert result.exit_code == 0, result.output
    a, b = json.loads(whole.read_text()), json.loads(merged.read_text())
    for key in ("folds", "average_ap", "map", "pooled_ap", "images", "faces"):
        assert a[key] == b[key], key
    assert a["roc"]["tpr_at_1000"] == b["roc"]["tpr_at_1000"]
    assert "FDDB Dataset Average AP: " + repr(a["average_ap"]) in result.output
    overlap = runner.invoke(app, ["eval", "merge", str(parts[0]), str(parts[0])])
    assert overlap.exit_code != 0


def test_eval_part_splits_the_images_in_two(fddb_sample: Path, weights: Path) -> None:
    import re

    from veil.faceboxes.data import load_dataset

    counts = {}
    for part in ("train", "test"):
        text = _eval("--dataset", str(fddb_sample), "--weights", str(weights), "--part", part)
        counts[part] = int(re.search(r"over (\d+) images", text).group(1))  # type: ignore[union-attr]
    assert counts["train"] + counts["test"] == len(load_dataset(fddb_sample))
    assert counts["train"] == len(load_dataset(fddb_sample).part("train"))
    args = ["eval", "--dataset", str(fddb_sample), "--weights", str(weights), "--part", "x"]
    bad = runner.invoke(app, args)
    assert bad.exit_code != 0 and "unknown part" in str(bad.exception)
