"""Mask compliance without sending faces: a 3-class face-crop classifier on the generic path.

A site counts faces with and without masks, but the face images must not leave it: each face crop goes
through the classifier's head and learned noise on the site, only that release reaches the server, which
runs the tail. Classes: ``with_mask``, ``without_mask``, ``mask_weared_incorrect`` (the Kaggle "Face Mask
Detection" set, ``../shared/data/mask-scenes``).

* ``data``: PASCAL VOC boxes -> 64 x 64 face crops, the train/test halves FaceBoxes' transforms use;
* ``model``: MobileNetV3-Small trained here from scratch (``scripts/train_mask_compliance.py``), its
  weights shipped in ``veil/assets/mask-compliance/``;
* ``evaluate``: ``veil eval --model mask-compliance`` (accuracy, balanced accuracy, per-class recall),
  locally or through Triton; ``shipped``: the transforms in ``transforms/``.

veil finds it through the ``veil.models`` entry point ``mask-compliance = "veil.mask_compliance:ENTRY"``.
This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.mask_compliance.shipped import all_transforms, shipped_default_split
from veil.models.public import ModelEntry

if TYPE_CHECKING:
    from torch import nn

#: The split of the shipped default transform when there is one (see docs/mask-compliance.md).
DEFAULT_SPLIT = "features.11"
INPUT_SHAPE = (1, 3, 64, 64)


def mask_compliance(weights: str | Path | None = None) -> nn.Module:
    """Mask-compliance face-crop classifier (MobileNetV3-Small, 64x64, 3 classes), trained by veil."""
    from veil.mask_compliance.model import load_classifier

    return load_classifier(weights)


def evaluate(model: nn.Module, **kwargs: Any) -> dict[str, Any]:
    """Accuracy, balanced accuracy and per-class recall on the mask-scenes face crops."""
    from veil.mask_compliance.evaluate import evaluate as run

    return run(model, **kwargs)


def peers() -> Any:
    """``veil audit --peers``: balanced accuracy on the test crops, train crops to fit peers on."""
    from veil.mask_compliance.peers import peers as make

    return make()


def _split_note() -> str:
    shipped = shipped_default_split()
    return f"default {shipped}, from the shipped default transform" if shipped else "no transform"


#: The registry entry (loaded through the entry point).
ENTRY = ModelEntry(
    name="mask-compliance",
    source="built-in",
    factory=mask_compliance,
    description="Mask-compliance face-crop classifier (MobileNetV3-Small, 64x64: with / without / incorrect)",
    split=shipped_default_split() or DEFAULT_SPLIT,
    example=INPUT_SHAPE,
    evaluate=evaluate,
    transforms=all_transforms,  # what `veil sweep --model mask-compliance` evaluates without --transform
    split_note=_split_note(),
    peers=peers,  # `veil audit --peers`: the task's metric and training crops
)
