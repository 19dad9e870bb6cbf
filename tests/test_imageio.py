"""Decoding, preprocessing and drawing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from veil.errors import InputError
from veil.imageio import atomic_write_bytes, draw_detections, load_image, preprocess, save_png


def test_preprocess_matches_float_reference() -> None:
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 300, 500), dtype=torch.uint8)
    batch = preprocess([img], size=(1024, 1024))
    x = batch.tensor
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = F.interpolate(img.flip(0).float()[None], size=(1024, 1024), mode="bilinear", align_corners=False)
    ref = ref - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    assert (x - ref).abs().max() <= 1.0  # uint8 rounding of the resized pixels only
    assert batch.original_sizes == [(300, 500)] and batch.resized_sizes == [(1024, 1024)]


def test_preprocess_own_scale_pads_with_zero() -> None:
    a = torch.full((3, 40, 60), 104, dtype=torch.uint8)
    b = torch.full((3, 64, 32), 104, dtype=torch.uint8)
    batch = preprocess([a, b], size=None, resize=1.0)
    assert batch.tensor.shape == (2, 3, 64, 60)
    assert batch.resized_sizes == [(40, 60), (64, 32)]
    assert batch.tensor[0, :, 40:, :].abs().max() == 0


def test_preprocess_rejects_wrong_input() -> None:
    with pytest.raises(InputError, match=r"uint8 RGB tensor \[3, H, W\]"):
        preprocess([torch.zeros(1, 3, 8, 8)])
    with pytest.raises(InputError, match="no images"):
        preprocess([])


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="cannot decode"):
        load_image(bad)


def test_draw_and_save_png(tmp_path: Path) -> None:
    img = torch.zeros(3, 50, 50, dtype=torch.uint8)
    drawn = draw_detections(img, torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.9]]), color="red")
    assert drawn[0, 10, 20] == 255 and drawn[1, 10, 20] == 0  # red edge
    assert drawn[0, 25, 25] == 0  # inside untouched
    save_png(drawn, tmp_path / "x.png")
    assert torch.equal(load_image(tmp_path / "x.png"), drawn)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    class Boom(bytes):
        def __len__(self) -> int:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
