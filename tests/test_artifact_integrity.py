"""Issue 32: every field that shapes what a client sends is hashed; a tampered transform is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import load_script, run_veil
from veil.artifact import load_transform, meta_digest, release_digest, save_transform
from veil.errors import TransformError
from veil.faceboxes.shipped import SHIPPED_DIR
from veil.models.checkpoint import sha256_file
from veil.noise import NoiseTransform

RDCL = SHIPPED_DIR / "faceboxes-rdcl-alpha0.8"
DEFAULT = SHIPPED_DIR / "faceboxes-inception3-alpha0.12"


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("transform.json", "transform.safetensors"):
        shutil.copyfile(src / name, dst / name)
    return dst


def _edit(path: Path, key: str, value: Any, *, rehash: bool) -> None:
    meta = json.loads((path / "transform.json").read_text())
    meta[key] = value
    if rehash:  # a forger who recomputes the meta hash (but cannot match the release digest)
        meta["meta_sha256"] = meta_digest(meta)
    (path / "transform.json").write_text(json.dumps(meta))


def test_shipped_transforms_are_sealed() -> None:
    for meta_file in sorted(SHIPPED_DIR.glob("*/transform.json")):
        meta = json.loads(meta_file.read_text())
        tr = load_transform(meta_file.parent)
        assert meta["format"] == "veil-transform/2" and meta["release_sha256"] == release_digest(tr)
        assert meta["meta_sha256"] == meta_digest(meta)
        assert meta["tensors_sha256"] == sha256_file(meta_file.parent / "transform.safetensors")
        assert meta["converted_from"]["release_sha256"] != meta["release_sha256"]
        assert len(meta["head_sha256"]) == 64 and 0.0 <= meta["sigma_floor"] <= meta["smax"]


# every field that shapes the sent tensor, with a value that changes it
SPEC_EDITS = [
    ("smax", 1e-9),
    ("smin", 0.1),
    ("granularity", "element"),
    ("split", "inception3"),
    ("input_size", [512, 512]),
    ("mean_bgr", [0.0, 0.0, 0.0]),
    ("sigma_floor", 0.0),
    ("suppressed_fraction", 0.5),
    ("head_sha256", "0" * 64),
    ("base_weights_sha256", "0" * 64),
    ("model", "other"),
]


@pytest.mark.parametrize(("key", "value"), SPEC_EDITS, ids=[k for k, _ in SPEC_EDITS])
def test_an_edited_release_field_is_refused(tmp_path: Path, key: str, value: Any) -> None:
    path = _copy(RDCL, tmp_path / "t")
    _edit(path, key, value, rehash=False)
    with pytest.raises(TransformError, match="meta_sha256") as info:
        load_transform(path)
    assert "\n" not in str(info.value)
    _edit(path, key, value, rehash=True)
    with pytest.raises(TransformError, match=r"(release_sha256|bad noise settings|wrong shape)"):
        load_transform(path)


@pytest.mark.parametrize(("key", "value"), [("alpha", 0.1), ("default", True), ("train", {})])
def test_any_edited_field_is_refused(tmp_path: Path, key: str, value: Any) -> None:
    path = _copy(RDCL, tmp_path / "t")
    _edit(path, key, value, rehash=False)
    with pytest.raises(TransformError, match="edited or is corrupt"):
        load_transform(path)


def test_a_resealed_forgery_is_refused_by_the_pinned_release(tmp_path: Path) -> None:
    """The digests are not signatures: only the release digest pinned out of band stops a full re-seal."""
    from veil.artifact import _release_sha256, release_spec, release_tensors

    audited = json.loads((RDCL / "transform.json").read_text())["release_sha256"]
    assert load_transform(RDCL, expect_release=audited[:12]).meta["release_sha256"] == audited
    path = _copy(RDCL, tmp_path / "t")
    meta = json.loads((path / "transform.json").read_text())
    meta["smax"] = 1e-9
    tr = load_transform(RDCL)
    tr.noise.smax = 1e-9
    meta["release_sha256"] = _release_sha256(release_spec(meta, tr.noise), release_tensors(tr.noise, None))
    meta["meta_sha256"] = meta_digest(meta)
    (path / "transform.json").write_text(json.dumps(meta))
    assert load_transform(path).noise.smax == 1e-9  # internally consistent again
    with pytest.raises(TransformError, match="is not the audited release"):
        load_transform(path, expect_release=audited)
    with pytest.raises(TransformError, match="at least 12"):
        load_transform(RDCL, expect_release="abc")


def test_cli_refuses_another_release_before_connecting(
    weights: Path, fddb_sample: Path, tmp_path: Path
) -> None:
    image = sorted(fddb_sample.rglob("*.jpg"))[0]
    args = ["detect", str(image), "--weights", str(weights), "--transform", str(RDCL), "--out", str(tmp_path)]
    proc = run_veil(*args, "--server", "127.0.0.1:9", "--expect-release", "0" * 64)
    assert proc.returncode != 0 and "is not the audited release" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = run_veil(
        "detect", str(image), "--weights", str(weights), "--server", "127.0.0.1:9", "--allow-clean",
        "--expect-release", "0" * 64, "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode != 0 and "--expect-release needs --transform" in proc.stderr


def test_a_fresh_save_round_trips_and_a_resave_keeps_the_release(weights: Path, tmp_path: Path) -> None:
    tr = load_transform(DEFAULT, weights)
    keys = ("model", "split", "alpha", "input_size", "mean_bgr", "base_weights_sha256")
    out = save_transform(
        tmp_path / "x", tr.noise, {k: tr.meta[k] for k in keys}, tr.tail_state, tr.head_state, weights=weights
    )
    again = load_transform(out, weights)
    # what `veil tune-tail` does: same release, same digest, whatever else the record says
    assert again.meta["release_sha256"] == tr.meta["release_sha256"] == release_digest(again)
    assert again.meta["head_sha256"] == tr.meta["head_sha256"]
    assert torch.equal(again.noise.rho, tr.noise.rho) and again.meta["sigma_floor"] == tr.meta["sigma_floor"]


def test_non_finite_tensors_are_never_written(tmp_path: Path) -> None:
    noise = NoiseTransform((4, 2, 2), granularity="channel")
    with torch.no_grad():
        noise.mu[1] = float("nan")
    with pytest.raises(TransformError, match=r"noise\.mu not finite") as info:
        save_transform(tmp_path / "t", noise, {"alpha": 0.1})
    assert "\n" not in str(info.value)
    good = NoiseTransform((4, 2, 2), granularity="channel")
    with pytest.raises(TransformError, match=r"tail\.w not finite"):
        save_transform(tmp_path / "t", good, {"alpha": 0.1}, tail_state={"w": torch.tensor([float("inf")])})
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary folder left


def test_unreadable_json_is_one_line(tmp_path: Path) -> None:
    path = _copy(RDCL, tmp_path / "t")
    (path / "transform.json").write_text("[" * 200_000)
    with pytest.raises(TransformError, match="unreadable JSON") as info:
        load_transform(path)
    assert "\n" not in str(info.value)


def test_an_old_transform_is_refused_then_converted(weights: Path, tmp_path: Path) -> None:
    path = _copy(RDCL, tmp_path / "old")
    meta = json.loads((path / "transform.json").read_text())
    for key in ("meta_sha256", "sigma_floor", "head_sha256"):
        del meta[key]
    old = meta.pop("converted_from")
    meta |= {"format": old["format"], "release_sha256": old["release_sha256"]}
    (path / "transform.json").write_text(json.dumps(meta))
    with pytest.raises(TransformError, match="convert it once"):
        load_transform(path)
    load_script("convert_transforms").convert(path, weights)
    converted = json.loads((path / "transform.json").read_text())
    assert converted == json.loads((RDCL / "transform.json").read_text())
