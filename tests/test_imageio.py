"""Decoding, preprocessing and drawing."""

from __future__ import annotations

import struct
import zlib
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


# -- size bounds (issue 32, item 6): hostile headers are refused before any pixel is decoded ------
def png_declaring(path: Path, width: int, height: int, idat: bytes = b"") -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` (crafted with struct and zlib), tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", ihdr) + (chunk(b"IDAT", idat) if idat else b"") + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_huge_declared_images_are_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veil.imageio import image_size

    monkeypatch.delenv("VEIL_MAX_IMAGE_MP", raising=False)
    zeros = zlib.compress(bytes(1 << 20), 9)
    bomb = png_declaring(tmp_path / "bomb.png", 100_000, 100_000, zeros)
    assert bomb.stat().st_size < 3000  # ~30 GB of RGB if decoded
    with pytest.raises(InputError, match="over the 50 MP limit"):
        load_image(bomb)
    with pytest.raises(InputError, match="over the 50 MP limit"):
        load_image(png_declaring(tmp_path / "big.png", 20_000, 20_000))  # header only
    mid = png_declaring(tmp_path / "mid.png", 8000, 8000)
    with pytest.raises(InputError, match=r"8000 x 8000 pixels \(64.0 MP\), over the 50 MP limit"):
        load_image(mid)
    monkeypatch.setenv("VEIL_MAX_IMAGE_MP", "70")  # raised: the header passes, decoding finds no data
    assert image_size(mid) == (8000, 8000)
    with pytest.raises(InputError, match="cannot decode"):
        load_image(mid)
    monkeypatch.setenv("VEIL_MAX_IMAGE_MP", "lots")
    with pytest.raises(InputError, match="VEIL_MAX_IMAGE_MP must be a number of megapixels"):
        image_size(mid)


def test_real_photos_pass_the_header_check(fddb_sample: Path) -> None:
    from veil.imageio import image_size

    path = sorted(fddb_sample.rglob("*.jpg"))[0]
    img = load_image(path)
    assert image_size(path) == tuple(img.shape[1:])


def test_network_input_is_bounded() -> None:
    from veil.imageio import MAX_INPUT_PIXELS, MAX_INPUT_SIDE, target_size

    assert target_size(362, 450, None, 9.1) == (3294, 4095)  # just inside 4096 a side
    with pytest.raises(InputError, match=r"makes a 45000 x 36200 network input .*use --resize 9.102 or less"):
        target_size(362, 450, None, 100.0)
    with pytest.raises(InputError, match="--resize must be a finite number"):
        target_size(362, 450, None, float("inf"))
    with pytest.raises(InputError, match="--size 8192 makes a 8192 x 8192 network input"):
        target_size(10, 10, (8192, 8192), 1.0)
    assert MAX_INPUT_SIDE == 4096 and MAX_INPUT_PIXELS == 4096 * 4096
    img = torch.zeros(3, 40, 50, dtype=torch.uint8)
    with pytest.raises(InputError, match="network input"):
        preprocess([img], size=None, resize=200.0)  # 8000 x 10000: refused before the resize allocates


def test_detect_refuses_hostile_images_before_writing(tmp_path: Path) -> None:
    """One line, exit 2, no output folder: for a bomb, and for --resize 100 on a small real image."""
    from conftest import run_veil

    out = tmp_path / "out"
    bomb = png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
    small = tmp_path / "small.png"
    save_png(torch.zeros(3, 362, 450, dtype=torch.uint8), small)
    for args, says in [
        ([str(small), str(bomb)], "over the 50 MP limit"),
        ([str(small), "--resize", "100"], "45000 x 36200 network input"),
    ]:
        proc = run_veil("detect", *args, "--weights", str(small), "--out", str(out))  # never read
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
        assert not out.exists()
    proc = run_veil("--max-image-mp", "0.1", "detect", str(small), "--weights", str(small), "--out", str(out))
    assert proc.returncode == 2 and "over the 0.1 MP limit" in proc.stderr and not out.exists()
