"""The supervised task loss: FaceBoxes' own MultiBox objective on annotated boxes.

Used by ``veil train --task multibox`` when a user has face boxes (FDDB or WIDER layout) from their
domain. Anchors are matched to boxes once, when the training samples are cached; each step then
costs a cross-entropy with hard-negative mining plus a smooth-L1 on the matched anchors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou
from tqdm import tqdm

from veil.errors import InputError
from veil.faceboxes.data import LabeledDataset
from veil.faceboxes.detect import VARIANCES, priors
from veil.imageio import load_image

MATCH_IOU = 0.35  # FaceBoxes' matching threshold
NEG_POS_RATIO = 3  # hard negatives kept per positive anchor
MIN_FACE_PX = 8.0  # boxes smaller than this after resizing are dropped (no anchor can match them)


def encode(boxes: Tensor, anchors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Corner boxes [A, 4] (normalised) -> the regressions :func:`veil.faceboxes.detect.decode` inverts."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-6)
    offset = (centre - anchors[:, :2]) / (variances[0] * anchors[:, 2:])
    return torch.cat([offset, (size / anchors[:, 2:]).log() / variances[1]], dim=-1)


def match(boxes: Tensor, anchors: Tensor, threshold: float = MATCH_IOU) -> tuple[Tensor, Tensor]:
    """Face boxes [G, 4] (normalised corners) -> regression targets [A, 4] and labels [A] (1 = face).

    An anchor is a face when its best box overlaps it by ``threshold``; every box also claims its
    best anchor, so small faces are never left without one.
    """
    n = anchors.shape[0]
    if boxes.numel() == 0:
        return torch.zeros(n, 4), torch.zeros(n, dtype=torch.uint8)
    iou = box_iou(boxes, box_convert(anchors, "cxcywh", "xyxy"))  # [G, A]
    best_iou, best_box = iou.max(0)
    claimed = iou.argmax(1)
    best_iou[claimed] = 2.0
    best_box[claimed] = torch.arange(boxes.shape[0])
    labels = (best_iou >= threshold).to(torch.uint8)
    return encode(boxes[best_box], anchors), labels


def multibox_loss(
    loc: Tensor, conf: Tensor, loc_t: Tensor, labels: Tensor, spare: Tensor | None = None
) -> Tensor:
    """Smooth-L1 on face anchors + cross-entropy on faces and the hardest 3x as many negatives.

    ``spare`` [S, A]: anchors never taken as negatives (unlabeled, but possibly faces).
    """
    pos = labels > 0
    ce = F.cross_entropy(conf.reshape(-1, 2), labels.reshape(-1).long(), reduction="none").view(pos.shape)
    hardness = ce.detach().masked_fill(pos if spare is None else pos | spare, 0.0)
    rank = hardness.argsort(1, descending=True).argsort(1)
    num_neg = (NEG_POS_RATIO * pos.sum(1, keepdim=True)).clamp(max=pos.shape[1] - 1)
    neg = rank < num_neg
    if spare is not None:
        neg &= ~spare
    n = pos.sum().clamp_min(1)
    box = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    return (box + ce[pos | neg].sum()) / n + 0.0 * loc.sum()  # loc stays in the graph (DDP)


@dataclass
class LabeledSample:
    """A training image (uint8, size x size) and its face boxes (normalised corners)."""

    image: Tensor
    boxes: Tensor


def random_crop(
    img: Tensor, boxes: np.ndarray, size: int, rng: random.Random, min_face: float = MIN_FACE_PX
) -> LabeledSample:
    """A random square crop (30-100% of the shorter side, some flipped) with the boxes it contains."""
    _, h, w = img.shape
    side = max(1, int(min(h, w) * rng.uniform(0.3, 1.0)))
    y, x = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
    crop = F.interpolate(
        img[None, :, y : y + side, x : x + side].float(), size=(size, size), mode="bilinear", antialias=True
    )[0]
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) - torch.tensor([x, y, x, y])
    centre = (b[:, :2] + b[:, 2:]) / 2
    inside = ((centre >= 0) & (centre < side)).all(1)  # a face belongs to the crop that holds its centre
    b = b[inside].clamp(0, side) / side
    b = b[((b[:, 2:] - b[:, :2]) * size >= min_face).all(1)]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
        b = torch.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], dim=1)
    return LabeledSample(crop.round().clamp(0, 255).to(torch.uint8), b)


def labeled_samples(
    datasets: Sequence[LabeledDataset], count: int, size: int, seed: int = 0, progress: bool = True
) -> list[LabeledSample]:
    """``count`` random crops of annotated images (deterministic for a seed); ignored faces dropped."""
    rng = random.Random(seed)
    pool = [img for d in datasets for img in d.images]
    if not pool:
        raise InputError("no annotated images to train on: check --labels and --labels-part")
    order = [pool[rng.randrange(len(pool))] for _ in range(count)]
    decoded: dict[Path, Tensor] = {}  # an image drawn several times is decoded once
    out = []
    for item in tqdm(order, desc="cropping annotated images", disable=not progress, unit="img"):
        if item.path not in decoded:
            decoded[item.path] = load_image(item.path)
        boxes = item.boxes if item.ignore is None else item.boxes[~item.ignore]
        out.append(random_crop(decoded[item.path], boxes, size, rng))
    return out


def match_samples(samples: Sequence[LabeledSample], size: int) -> tuple[Tensor, Tensor]:
    """Regression targets [S, A, 4] and labels [S, A] for every sample (computed once, then cached)."""
    anchors = priors(size, size)
    pairs = [match(s.boxes, anchors) for s in samples]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
