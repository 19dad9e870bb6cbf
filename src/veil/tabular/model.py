"""The breast-cancer classifier: standardise -> 30 -> 64 -> 64 -> 2 MLP, and its shipped weights.

Modules in execution order (each is a split point ``veil.split_points`` lists): ``norm`` (the train rows'
standardisation, fixed buffers), ``fc1``, ``act1`` (the first hidden layer, 64 ReLU units: the default
split), ``fc2``, ``act2`` (the second hidden layer: the comparison split), ``out`` (2 logits: malignant,
benign).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from veil.errors import CheckpointError, brief

FEATURES, HIDDEN, CLASSES = 30, 64, 2
#: The shipped weights, relative to ``veil/assets`` (``scripts/train_breast_cancer.py``; SHA-256 in its
#: ``SHA256SUMS``, checked on every load).
WEIGHTS = "tabular/breast-cancer-mlp.safetensors"


class Standardize(nn.Module):
    """``(x - mean) / std`` with the train rows' statistics as buffers (saved with the weights)."""

    mean: Tensor
    std: Tensor

    def __init__(self, features: int = FEATURES) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BreastCancerMLP(nn.Module):
    """Raw sklearn features (B, 30) -> logits (B, 2)."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.norm = Standardize()
        self.fc1, self.act1 = nn.Linear(FEATURES, hidden), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden, hidden), nn.ReLU()
        self.out = nn.Linear(hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act2(self.fc2(self.act1(self.fc1(self.norm(x))))))


def shipped_weights() -> Path:
    """The shipped weights file, verified against ``SHA256SUMS``."""
    from veil.assets import verified

    return verified(WEIGHTS)


def build(weights: str | Path | None = None) -> BreastCancerMLP:
    """The classifier with ``weights`` (default: the shipped ones), in eval mode."""
    model = BreastCancerMLP()
    load_weights(model, shipped_weights() if weights is None else weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict strictly; NaN/inf weights and wrong layouts are refused in one line."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such weights file (retrain: python scripts/train_breast_cancer.py)"
        )
    try:
        state = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {', '.join(bad[:3])}: retrain the model")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = brief(exc, 160)
        raise CheckpointError(f"{path}: not breast-cancer-mlp weights ({first})") from None
    return model.eval()
