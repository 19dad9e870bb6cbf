"""Tiled detection: large faces from the full frame, small ones from zoomed overlapping crops.

FaceBoxes' smallest anchor is 32 px at its input size, so a crowd's 25-px faces sit below what the
full frame can resolve, and a private release (whose head block and noise hide fine detail) loses them
first. Cutting the image into ``k x k`` overlapping crops, each sent at the full input size, enlarges
every face by about ``k``: each crop is an ordinary request (same wire shape, fresh noise), and the
crowd's faces land above the smallest anchor.
Crops only contribute faces the full frame sees as small (``max_face``), so they never need to show a large
one: the frames go first, and every face a frame found at or above ``max_face`` is painted over with the
model's mean colour (what the network sees as zero) before its crops are cut. An enlarged view of a face
the frame already has would only give an attacker more than the frame does (docs/privacy.md, "Crowds
without a new release: tiles"); a zoomed crop of a large face would also yield confident parts of it.

Works with anything that maps images to boxes (a local :class:`~veil.faceboxes.detect.Detector` or a
:class:`~veil.client.VeilClient`): one batch of frames, then one batch of their crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import nms

from veil.errors import InputError
from veil.faceboxes.detect import PostProcess
from veil.faceboxes.eval.runner import DetectFn
from veil.imageio import FACEBOXES_MEAN_BGR

MAX_TILES = 6


@dataclass(frozen=True)
class TileGrid:
    """``tiles x tiles`` crops sharing ``overlap`` of their side with each neighbour, plus the full frame.

    ``max_face``: a crop's detection is kept only if its longer side, at the full frame's input scale,
    is below this many pixels (default: twice FaceBoxes' smallest anchor). Frame detections at least
    that large and scoring ``hide_score`` or more are painted over in the crops, ``hide_margin`` of
    their side wider on each side (hair, ears); ``hide_score=None`` sends crops unpainted.
    """

    tiles: int = 2
    overlap: float = 0.5
    max_face: float = 64.0
    hide_score: float | None = 0.3
    hide_margin: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.tiles <= MAX_TILES:
            raise InputError(f"--tiles must be between 1 (full frame only) and {MAX_TILES}, got {self.tiles}")
        if not 0.0 <= self.overlap <= 0.5:
            raise InputError(f"tile overlap must be between 0 and 0.5 of a tile, got {self.overlap}")
        if self.max_face <= 0:
            raise InputError(f"tile max_face must be > 0 pixels, got {self.max_face}")
        if self.hide_score is not None and not 0.0 <= self.hide_score <= 1.0:
            raise InputError(f"tile hide_score must be a score in [0, 1] (or None), got {self.hide_score}")
        if not 0.0 <= self.hide_margin <= 1.0:
            raise InputError(f"tile hide_margin must be between 0 and 1 of a face, got {self.hide_margin}")

    @property
    def requests(self) -> int:
        """Releases sent per image: the full frame and every crop."""
        return 1 + (self.tiles**2 if self.tiles > 1 else 0)

    @property
    def zoom(self) -> float:
        """How much larger a face is in a crop than in the full frame (per side)."""
        return self.tiles - (self.tiles - 1) * self.overlap

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Crop windows (y0, x0, y1, x1) in pixels, rows outer; empty for ``tiles == 1``."""
        if self.tiles == 1:
            return []
        out = []
        for r in range(self.tiles):
            for c in range(self.tiles):
                y0, y1 = _span(r, self.tiles, self.zoom, height)
                x0, x1 = _span(c, self.tiles, self.zoom, width)
                out.append((y0, x0, y1, x1))
        return out


def _span(index: int, tiles: int, zoom: float, length: int) -> tuple[int, int]:
    """One tile's [start, end) along a side: outward rounding, so no pixel falls between two tiles."""
    tile = length / zoom
    start = index * (length - tile) / (tiles - 1)
    return math.floor(start), min(length, math.ceil(start + tile))


def crops(image: Tensor, grid: TileGrid) -> list[Tensor]:
    """The crops of one uint8 [3, H, W] image, in :meth:`TileGrid.windows` order."""
    return [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in grid.windows(image.shape[1], image.shape[2])]


def _input_sides(boxes: Tensor, image_size: tuple[int, int], input_size: tuple[int, int]) -> Tensor:
    """Longer side of each [M, >=4] box, in pixels of the network input the image is resized to."""
    scale = torch.tensor([input_size[1] / image_size[1], input_size[0] / image_size[0]], dtype=boxes.dtype)
    return ((boxes[:, 2:4] - boxes[:, :2]) * scale).amax(dim=1)


def hide_large_faces(image: Tensor, full: Tensor, grid: TileGrid, input_size: tuple[int, int]) -> Tensor:
    """A copy of ``image`` with the frame's large faces (``full``: its boxes) in the mean colour.

    What the crops are cut from: a crop never shows a face the full frame found at ``max_face`` or more.
    """
    if grid.hide_score is None:
        return image
    height, width = int(image.shape[1]), int(image.shape[2])
    boxes = full.reshape(-1, 5)
    large = boxes[
        (boxes[:, 4] >= grid.hide_score) & (_input_sides(boxes, (height, width), input_size) >= grid.max_face)
    ]
    if len(large) == 0:
        return image
    out = image.clone()
    fill = torch.tensor(FACEBOXES_MEAN_BGR[::-1], dtype=image.dtype).view(
        3, 1, 1
    )  # RGB: zero once normalised
    pad = (large[:, 2:4] - large[:, :2]) * grid.hide_margin
    for (x0, y0, x1, y1), (px, py) in zip(large[:, :4].tolist(), pad.tolist(), strict=True):
        xa, ya = max(0, math.floor(x0 - px)), max(0, math.floor(y0 - py))
        xb, yb = min(width, math.ceil(x1 + px)), min(height, math.ceil(y1 + py))
        if xb > xa and yb > ya:
            out[:, ya:yb, xa:xb] = fill
    return out


def merge(
    image_size: tuple[int, int],
    full: Tensor,
    parts: Sequence[Tensor],
    grid: TileGrid,
    input_size: tuple[int, int],
    nms_iou: float = PostProcess.nms_iou,
    keep_top_k: int = PostProcess.keep_top_k,
) -> Tensor:
    """Full-frame boxes plus the crops' small boxes (moved back to image pixels), after one NMS."""
    height, width = image_size
    kept = [full.reshape(-1, 5)]
    for (y0, x0, _, _), dets in zip(grid.windows(height, width), parts, strict=True):
        boxes = dets.reshape(-1, 5).clone()
        boxes[:, :4] += torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        kept.append(boxes[_input_sides(boxes, image_size, input_size) < grid.max_face])
    dets = torch.cat(kept)
    keep = nms(dets[:, :4].float(), dets[:, 4].float(), nms_iou)[:keep_top_k]
    return dets[keep]


def tiled(
    detect: DetectFn,
    grid: TileGrid,
    input_size: tuple[int, int] | None,
    nms_iou: float = PostProcess.nms_iou,
    keep_top_k: int = PostProcess.keep_top_k,
) -> DetectFn:
    """``detect`` run on each image and its crops, merged; ``tiles == 1`` returns ``detect`` itself.

    ``input_size``: the full frame's network input (H, W), which ``max_face`` is measured at; tiles
    need a fixed one (None: each image at its own scale, refused).
    """
    if grid.tiles == 1:
        return detect
    if input_size is None:
        raise InputError("--tiles needs a fixed input size: drop --resize (or use --size)")
    size_in = input_size

    def run(images: Sequence[Tensor]) -> list[Tensor]:
        fulls = detect(images)  # frames first: their large faces never leave again in a crop
        cut = [
            crops(hide_large_faces(img, full, grid, size_in), grid)
            for img, full in zip(images, fulls, strict=True)
        ]
        found = detect([c for parts in cut for c in parts])
        n = grid.tiles**2
        out = []
        for i, (image, full) in enumerate(zip(images, fulls, strict=True)):
            size = (int(image.shape[1]), int(image.shape[2]))
            out.append(merge(size, full, found[i * n : (i + 1) * n], grid, size_in, nms_iou, keep_top_k))
        return out

    return run


__all__ = ["TileGrid", "crops", "hide_large_faces", "merge", "tiled"]
