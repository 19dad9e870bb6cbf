"""FaceBoxes' side of ``veil audit --peers`` (``ENTRY.peers``): its metric, training inputs, transforms.

Metric: pooled AP (IoU 0.5, :func:`veil.faceboxes.eval.runner.pooled_ap`) on the first ``max_images``
pictures of the test half of ``../shared/data/mask-scenes`` (real multi-face street scenes in FDDB
layout) at ``size`` x ``size`` (512: the FaceBoxes audit's input size, which keeps it cheap on CPU).
Training inputs: the train half's pictures at the same size, preprocessed as FaceBoxes expects (BGR
minus the mean, 0-255). ``load(path)``: a FaceBoxes transform directory as a ``Protected``
(:func:`veil.faceboxes.generic.from_transform`). ``VEIL_MASK_SCENES`` overrides the dataset root and
``VEIL_FACEBOXES_WEIGHTS`` the weights (default ``../shared/weights/faceboxes/FaceBoxes.pth``).

This module does not import ``veil.audit`` (FaceBoxes sits below the audit): :class:`FaceBoxesPeers`
satisfies the :class:`veil.audit.peers.PeerTask` protocol by its attributes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from veil.errors import InputError
from veil.faceboxes.data import load_dataset
from veil.faceboxes.data.labels import LabeledDataset
from veil.faceboxes.detect import Detector
from veil.faceboxes.eval.runner import pooled_ap, predict
from veil.faceboxes.registry import get_spec
from veil.imageio import load_image, preprocess

_SHARED = Path(__file__).resolve().parents[3].parent / "shared"
DEFAULT_ROOT = _SHARED / "data" / "mask-scenes"
DEFAULT_WEIGHTS = _SHARED / "weights" / "faceboxes" / "FaceBoxes.pth"


def _identity(x: Any) -> Any:
    return x


@dataclass
class FaceBoxesPeers:
    """A ``PeerTask`` for FaceBoxes: AP on real scenes, scene inputs to train peers on."""

    dataset: LabeledDataset
    batches: list[Tensor]
    weights: Path
    size: int = 512
    draws: int = 2
    name: str = "faceboxes"
    metric: str = "AP"
    normalisation: dict[str, Any] | None = field(
        default_factory=lambda: {"mean": list(get_spec("faceboxes").mean_bgr), "channels": "BGR"}
    )

    def score(self, module: nn.Module) -> float:
        """Pooled AP of ``module`` (preprocessed input -> (loc, conf)) on the scenes at ``size``."""
        detector = Detector(module.eval(), _identity, size=(self.size, self.size))
        return float(pooled_ap(predict(self.dataset, detector.detect, batch_size=4, progress=False)))

    def to_input(self, images: Sequence[Tensor], size: int) -> Tensor:
        """uint8 RGB images -> FaceBoxes' input (BGR minus the mean) at ``size`` x ``size``."""
        return preprocess(list(images), size=(size, size)).tensor

    def load(self, path: str | Path) -> Any:
        """A FaceBoxes transform directory as a ``Protected`` (its noise, head block and tail)."""
        from veil.faceboxes.generic import from_transform

        return from_transform(path, self.weights)


def peers(
    root: str | Path | None = None,
    weights: str | Path | None = None,
    size: int = 512,
    max_images: int | None = 60,
    max_train: int = 48,
    batch: int = 4,
    draws: int = 2,
) -> FaceBoxesPeers:
    """The task hook (see the module docstring)."""
    root = Path(root or os.environ.get("VEIL_MASK_SCENES") or DEFAULT_ROOT)
    weights = Path(weights or os.environ.get("VEIL_FACEBOXES_WEIGHTS") or DEFAULT_WEIGHTS)
    if not (root / "FDDB-folds").is_dir():
        raise InputError(
            f"peers of FaceBoxes need the mask-scenes set (FDDB layout) at {root}: set VEIL_MASK_SCENES"
        )
    if not weights.is_file():
        raise InputError(f"FaceBoxes weights {weights} not found: set VEIL_FACEBOXES_WEIGHTS")
    data = load_dataset(root, kind="fddb")
    test = data.part("test")
    test = LabeledDataset(test.name, test.images[:max_images], [], [])
    train = data.part("train").images[:max_train]
    x = torch.cat([preprocess([load_image(img.path)], size=(size, size)).tensor for img in train])
    batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)] or [x]
    return FaceBoxesPeers(test, batches, weights, size=size, draws=draws)
