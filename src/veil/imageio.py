"""Images in and out: decoding, FaceBoxes preprocessing, drawing boxes (all via torchvision).

Preprocessing resizes while the image is still uint8 (four times less memory traffic than float) and
produces a channels-last float batch, the layout the convolutions are fastest in on CPU.

Sizes are bounded before memory is spent: a file's header is read first and an image declaring more
than ``$VEIL_MAX_IMAGE_MP`` megapixels (default 50) is refused undecoded; the network input (``resize``
times the image) stays within :data:`MAX_INPUT_SIDE` pixels a side and :data:`MAX_INPUT_PIXELS`.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, encode_png
from torchvision.utils import draw_bounding_boxes

from veil.errors import InputError
from veil.files import follow_umask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
FACEBOXES_MEAN_BGR = (104.0, 117.0, 123.0)

#: Images whose header declares more megapixels than this are refused (``$VEIL_MAX_IMAGE_MP`` overrides).
DEFAULT_MAX_IMAGE_MP = 50.0
#: The network input's largest side and area (``resize`` x the image, or a fixed size): 4096 x 4096.
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE


def max_image_pixels() -> int:
    """The decode limit in pixels: ``$VEIL_MAX_IMAGE_MP`` megapixels (``veil --max-image-mp``), else 50 MP."""
    text = os.environ.get("VEIL_MAX_IMAGE_MP", "").strip()
    try:
        mp = float(text) if text else DEFAULT_MAX_IMAGE_MP
    except ValueError:
        mp = math.nan
    if not (math.isfinite(mp) and mp > 0):
        raise InputError(f"VEIL_MAX_IMAGE_MP must be a number of megapixels > 0, got {text!r}")
    return int(mp * 1e6)


def _too_large(path: Path, declared: str, limit: int) -> InputError:
    return InputError(
        f"{path}: the image declares {declared}, over the {limit / 1e6:g} MP limit: shrink it, or raise the "
        "limit with VEIL_MAX_IMAGE_MP (veil --max-image-mp)"
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header alone, refusing images over :func:`max_image_pixels`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP and refuses from 179 MP on its own
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise _too_large(path, f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP", limit) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise InputError(f"{path}: cannot decode image ({first})") from None
    if width * height > limit:
        raise _too_large(path, f"{width} x {height} pixels ({width * height / 1e6:.1f} MP)", limit)
    return height, width


def load_image(path: str | Path) -> Tensor:
    """Decode an image file to a uint8 RGB tensor [3, H, W], after checking its header's size."""
    path = Path(path)
    image_size(path)
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: cannot decode image ({str(exc).splitlines()[0][:100]})") from exc


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for reproducibility."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


@dataclass(frozen=True)
class Batch:
    """A preprocessed batch and what is needed to map boxes back to each original image."""

    tensor: Tensor  # [N, 3, H, W] float32, BGR minus mean, channels-last
    original_sizes: list[tuple[int, int]]  # (height, width) of each source image
    resized_sizes: list[tuple[int, int]]  # (height, width) of each image inside the (padded) batch


def _check_image(img: Tensor, index: int) -> None:
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
        raise InputError(
            f"image {index}: expected a uint8 RGB tensor [3, H, W], got {img.dtype} {tuple(img.shape)}; "
            "decode files with veil.imageio.load_image"
        )


def target_size(height: int, width: int, size: tuple[int, int] | None, resize: float) -> tuple[int, int]:
    """Network input size for one image: fixed ``size`` (H, W), or the image's own size times ``resize``;
    refused when over :data:`MAX_INPUT_SIDE` a side or :data:`MAX_INPUT_PIXELS` in all."""
    if size is None and not (math.isfinite(resize) and resize > 0):
        raise InputError(f"--resize must be a finite number > 0, got {resize}")
    h, w = size if size is not None else (max(32, round(height * resize)), max(32, round(width * resize)))
    if max(h, w) > MAX_INPUT_SIDE or h * w > MAX_INPUT_PIXELS:
        how = f"--size {h}" if size is not None else f"--resize {resize:g} of a {width} x {height} image"
        fix = "a smaller --size"
        if size is None:
            best = min(MAX_INPUT_SIDE / max(height, width), math.sqrt(MAX_INPUT_PIXELS / (height * width)))
            fix = f"--resize {math.floor(best * 1000) / 1000:g} or less for this image"
        raise InputError(
            f"{how} makes a {w} x {h} network input ({h * w / 1e6:.1f} MP); the limit is {MAX_INPUT_SIDE} px "
            f"a side and {MAX_INPUT_PIXELS / 1e6:.1f} MP: use {fix}"
        )
    return h, w


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    """Bilinear resize of a uint8 [1, 3, H, W] batch to uint8 values: CPU has a native uint8 kernel,
    other devices resize in float and round, which matches it to within one grey level."""
    if x.device.type == "cpu":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    y = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255)


def preprocess(
    images: Sequence[Tensor],
    size: tuple[int, int] | None = (1024, 1024),
    resize: float = 1.0,
    mean_bgr: tuple[float, float, float] = FACEBOXES_MEAN_BGR,
    device: str | torch.device = "cpu",
) -> Batch:
    """uint8 RGB images -> one float batch (BGR minus mean), zero-padded to a common size if needed.

    On a GPU ``device`` the uint8 image is uploaded first and resized there: the upload is a quarter of
    the float batch's bytes, and the resize, the costliest CPU step, becomes negligible.
    """
    if not images:
        raise InputError("no images to preprocess")
    device = torch.device(device)
    resized: list[Tensor] = []
    for i, img in enumerate(images):
        _check_image(img, i)
        h, w = target_size(img.shape[1], img.shape[2], size, resize)
        x = img.to(device).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # fast resize layout
        if (h, w) != tuple(img.shape[1:]):
            x = _resize(x, h, w)
        resized.append(x)
    height = max(x.shape[2] for x in resized)
    width = max(x.shape[3] for x in resized)
    mean = torch.tensor(mean_bgr, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    for i, x in enumerate(resized):
        region = out[i : i + 1, :, : x.shape[2], : x.shape[3]]
        region.copy_(x.flip(1))  # RGB -> BGR, uint8 -> float and into channels-last, in one pass
        region.sub_(mean)
    return Batch(
        tensor=out,
        original_sizes=[(int(img.shape[1]), int(img.shape[2])) for img in images],
        resized_sizes=[(int(x.shape[2]), int(x.shape[3])) for x in resized],
    )


def draw_detections(image: Tensor, detections: Tensor, color: str = "red", width: int = 3) -> Tensor:
    """Boxes [M, 5] (x1, y1, x2, y2, score) drawn on a uint8 image, each labelled with its score."""
    if detections.numel() == 0:
        return image.clone()
    labels = [f"{s:.2f}" for s in detections[:, 4].tolist()]
    return draw_bounding_boxes(image, detections[:, :4], labels=labels, colors=color, width=width)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(image: Tensor, path: str | Path) -> None:
    """Encode a uint8 [3, H, W] tensor as PNG, atomically."""
    atomic_write_bytes(path, encode_png(image.contiguous()).numpy().tobytes())
