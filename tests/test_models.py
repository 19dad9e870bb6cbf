"""FaceBoxes: architecture, checkpoint loading in both layouts, split points, one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from veil.errors import CheckpointError, SplitPointError, UnknownModelError
from veil.faceboxes.model import SPLIT_POINTS, FaceBoxes, count_parameters
from veil.faceboxes.registry import create_model, get_spec, list_models


def test_architecture_matches_published_layout() -> None:
    model = FaceBoxes()
    assert count_parameters(model) == 1_007_330
    assert len(model.state_dict()) == 174


def test_registry_lists_and_rejects() -> None:
    assert "faceboxes" in list_models()
    assert get_spec("FaceBoxes").input_size == (1024, 1024)
    with pytest.raises(UnknownModelError, match="choose one of faceboxes"):
        create_model("retinaface")


def test_loads_reference_layout_strict(faceboxes: torch.nn.Module, weights: Path) -> None:
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    for key, value in faceboxes.state_dict().items():
        assert torch.equal(value, raw[key]), key


def test_alt_layout_maps_every_tensor(alt_weights: Path) -> None:
    model = create_model("faceboxes", alt_weights, verify=True)
    raw = torch.load(alt_weights, map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["loc.0.weight"], raw["loc_layers.0.weight"])
    assert torch.equal(
        model.state_dict()["conv1.bn.running_var"], raw["feature_extractor.conv1.norm.running_var"]
    )


def test_split_is_exact_at_every_point(faceboxes: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        loc, conf = faceboxes(x)
        assert loc.shape == (1, 21824, 4) and conf.shape == (1, 21824, 2)
        for at in SPLIT_POINTS:
            head, tail = faceboxes.split(at)
            act = head(x)
            assert act.shape == (1, 128, 32, 32), at
            l2, c2 = tail(act)
            assert torch.equal(l2, loc) and torch.equal(c2, conf), at


def test_split_halves_do_not_share_parameters(faceboxes: torch.nn.Module) -> None:
    head, tail = faceboxes.split("inception3")
    head_ids = {id(p) for p in head.parameters()}
    tail_ids = {id(p) for p in tail.parameters()}
    assert head_ids and tail_ids and not head_ids & tail_ids
    assert len(head_ids) + len(tail_ids) == len(list(faceboxes.parameters()))


def test_unknown_split_point_lists_valid_ones(faceboxes: torch.nn.Module) -> None:
    with pytest.raises(SplitPointError, match="rdcl, inception1, inception2, inception3"):
        faceboxes.split("conv3")


def test_missing_file_error() -> None:
    with pytest.raises(CheckpointError, match="weights file not found"):
        create_model("faceboxes", "/nonexistent/FaceBoxes.pth")


def test_truncated_file_error(weights: Path, tmp_path: Path) -> None:
    bad = tmp_path / "FaceBoxes.pth"
    bad.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        create_model("faceboxes", bad)
    assert "\n" not in str(info.value)


def test_foreign_checkpoint_error(tmp_path: Path) -> None:
    foreign = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this model"):
        create_model("faceboxes", foreign)


def test_wrong_shapes_error(tmp_path: Path) -> None:
    state = FaceBoxes().state_dict()
    state["loc.0.weight"] = torch.zeros(3, 128, 3, 3)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        create_model("faceboxes", path)


def test_code_in_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": FaceBoxes()}, path)  # a pickled module: code, not data
    with pytest.raises(CheckpointError, match="refused"):
        create_model("faceboxes", path)


def test_checksum_verification(weights: Path, tmp_path: Path) -> None:
    create_model("faceboxes", weights, verify=True)
    copy_dir = tmp_path / "faceboxes"
    copy_dir.mkdir()
    shutil.copy(weights, copy_dir / "FaceBoxes.pth")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  faceboxes/FaceBoxes.pth\n")
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        create_model("faceboxes", copy_dir / "FaceBoxes.pth", verify=True)
