"""The 3-class face-crop classifier: torchvision MobileNetV3-Small at 64 x 64, trained here from scratch.

Inputs are RGB crops (:func:`veil.mask_compliance.data.face_crop`) scaled to [0, 1] and normalised with
:data:`NORMALISATION` (ImageNet statistics); outputs are logits over
:data:`veil.mask_compliance.data.CLASSES`. The shipped weights (``veil/assets/mask-compliance/``,
safetensors: data only) are checked against ``SHA256SUMS`` and refused when they hold NaN or infinities.
``scripts/train_mask_compliance.py`` re-trains them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from veil.errors import CheckpointError, brief
from veil.mask_compliance.data import CLASSES, INPUT_SIZE

#: Where the shipped weights live, relative to ``veil/assets`` (listed in its SHA256SUMS).
WEIGHTS = "mask-compliance/mobilenet_v3_small-64.safetensors"
#: What the classifier expects after scaling to [0, 1]: recorded in every transform's input spec.
NORMALISATION: dict[str, list[float]] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def build() -> nn.Module:
    """An untrained MobileNetV3-Small with a 3-class head."""
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(num_classes=len(CLASSES))


def shipped_weights() -> Path:
    """The shipped weights, verified against ``SHA256SUMS``."""
    from veil.assets import verified

    return verified(WEIGHTS)


def load_classifier(weights: str | Path | None = None) -> nn.Module:
    """The classifier with ``weights`` (default: the shipped ones), in eval mode; NaN weights refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else shipped_weights()
    if not path.is_file():
        raise CheckpointError(f"mask-compliance weights {path} not found: pass an existing .safetensors file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a safetensors file ({exc}); pass the classifier's weights"
        ) from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]!r}): the training "
            "diverged or the file is corrupt; re-train with scripts/train_mask_compliance.py"
        )
    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = brief(exc, 160)
        raise CheckpointError(f"{path}: not MobileNetV3-Small 3-class weights ({first})") from None
    return model.eval()


def to_input(crops: Tensor) -> Tensor:
    """uint8 crops [N, 3, H, W] -> the classifier's normalised float input."""
    mean = torch.tensor(NORMALISATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALISATION["std"]).view(1, 3, 1, 1)
    return (crops.float() / 255 - mean) / std


def example() -> Tensor:
    """One input batch of the classifier's shape (what ``veil.protect`` records as the input spec)."""
    return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
