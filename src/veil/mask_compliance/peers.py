"""Mask compliance's side of ``veil audit --peers`` (``ENTRY.peers``): its metric and its training crops.

Metric: balanced accuracy (:func:`veil.mask_compliance.metrics.scores`) on the face crops of the test half
of ``../shared/data/mask-scenes`` (the ``veil eval --model mask-compliance`` default). Training inputs:
the train half's crops, normalised as the classifier expects, in batches of 64 (unlabeled: every peer
distils from the clean classifier). ``VEIL_MASK_SCENES`` overrides the dataset root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.errors import InputError
from veil.mask_compliance.data import INPUT_SIZE, crops, load_faces
from veil.mask_compliance.evaluate import predict
from veil.mask_compliance.metrics import confusion, scores
from veil.mask_compliance.model import NORMALISATION, to_input

#: The mask-scenes root looked for when VEIL_MASK_SCENES is unset (the repository's ../shared).
DEFAULT_ROOT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mask-scenes"


@dataclass
class MaskPeers:
    """A :class:`veil.audit.peers.PeerTask` for the mask-compliance classifier."""

    test_x: Tensor  # uint8 crops of the test half
    test_y: Tensor
    batches: list[Tensor]  # normalised train-half crops
    draws: int = 3
    name: str = "mask-compliance"
    metric: str = "balanced accuracy"
    normalisation: dict[str, Any] | None = field(default_factory=lambda: dict(NORMALISATION))
    load: Any = None  # veil.load: the shipped transforms are generic ones

    def score(self, module: nn.Module) -> float:
        """Balanced accuracy of ``module`` (normalised crops -> logits) on the test crops."""
        m = confusion(self.test_y.numpy(), predict(module.eval(), self.test_x))
        return float(scores(m)["balanced_accuracy"])

    def to_input(self, images: Sequence[Tensor], size: int) -> Tensor:
        """uint8 RGB images -> the classifier's normalised input at ``size`` x ``size``."""
        x = torch.stack(
            [
                F.interpolate(i.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True)[0]
                for i in images
            ]
        )
        return to_input(x.round().clamp(0, 255))


def peers(
    root: str | Path | None = None,
    max_train: int | None = 1024,
    max_test: int | None = None,
    batch: int = 64,
    draws: int = 3,
) -> MaskPeers:
    """The task hook: test-half crops for the metric, train-half crops for training (seed-free order)."""
    root = Path(root or os.environ.get("VEIL_MASK_SCENES") or DEFAULT_ROOT)
    if not (root / "annotations").is_dir():
        raise InputError(
            f"peers of mask-compliance need the mask-scenes set at {root} (annotations/ + originalPics/): "
            "set VEIL_MASK_SCENES to its root"
        )
    test_x, test_y = crops(load_faces(root, "test")[:max_test], INPUT_SIZE)
    train_x, _ = crops(load_faces(root, "train")[:max_train], INPUT_SIZE)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    train = to_input(train_x[order])
    batches = [train[i : i + batch] for i in range(0, len(train) - batch + 1, batch)] or [train]
    return MaskPeers(test_x, test_y, batches, draws=draws)
