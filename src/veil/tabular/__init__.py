"""Breast-cancer MLP, veil's tabular task: 30 sklearn features -> 64 -> 64 -> 2 on the generic path.

* ``data``: sklearn's bundled WDBC rows, the fixed stratified split (seed 34, 398 train / 171 test), the
  train rows' standardisation (held by the model's first module: clients send raw columns);
* ``model``: the network and its shipped weights (``veil/assets/tabular/``, SHA-256 checked, NaN refused);
* ``evaluate``: ``veil eval --model breast-cancer-mlp`` (accuracy, balanced accuracy, per-class recall;
  locally or through Triton with ``--server``);
* ``shipped``: the transforms in ``transforms/`` (split ``act1`` after the first hidden layer; ``act2``
  for comparison), made with ``veil.protect`` by ``scripts/tabular_transforms.py``.

veil finds it through the entry point ``breast-cancer-mlp = "veil.tabular:ENTRY"``. ``veil audit
--model breast-cancer-mlp`` takes its attacker rows from :func:`audit_data` (train rows for the attacker,
test rows to score). This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.models.public import ModelEntry
from veil.tabular.shipped import all_transforms, default_split

if TYPE_CHECKING:
    from torch import Tensor, nn

NAME = "breast-cancer-mlp"
#: Where the MLP may be cut (== veil.split_points on it; kept here so listing needs no torch).
SPLIT_POINTS: tuple[str, ...] = ("norm", "fc1", "act1", "fc2", "act2")


def breast_cancer_mlp(weights: str | Path | None = None) -> nn.Module:
    """Breast-cancer MLP (sklearn WDBC, 30 -> 64 -> 64 -> 2, standardisation inside), shipped weights."""
    from veil.tabular.model import build

    return build(weights)


def example() -> Tensor:
    """Eight train rows (raw features): what ``veil.protect`` sizes the noise from."""
    import torch

    from veil.tabular.data import rows

    return torch.from_numpy(rows("train").x[:8])


def evaluate(model: nn.Module, **options: Any) -> dict[str, Any]:
    """``veil eval --model breast-cancer-mlp``: see :func:`veil.tabular.evaluate.evaluate`."""
    from veil.tabular.evaluate import evaluate as run

    return run(model, **options)


def audit_data() -> dict[str, Any]:
    """The vector audit's rows: the attacker trains on the train rows and is scored on the test rows."""
    from veil.tabular.data import feature_names, rows

    return {"aux": rows("train").x, "eval": {"test": rows("test").x}, "features": feature_names()}


ENTRY = ModelEntry(
    name=NAME,
    source="built-in",
    factory=breast_cancer_mlp,
    description="Breast-cancer MLP (sklearn WDBC, 30 -> 64 -> 64 -> 2), trained by veil",
    split="act1",  # after the first hidden layer
    split_points=SPLIT_POINTS,
    example=example,
    split_note=f"default {default_split() or 'act1'}, from the shipped default transform",
    evaluate=evaluate,
    transforms=all_transforms,
    audit_data=audit_data,
)
