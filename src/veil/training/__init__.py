"""Training a transform (``veil train``, ``veil tune-tail``): the fine-tune pass that learns the noise.

Modules, lowest first (import-linter's ``training-layers`` contract keeps this order):

- ``losses``: FaceBoxes' distillation (keep the task);
- ``multibox``: FaceBoxes' supervised MultiBox loss and the annotated samples it trains on;
- ``adversary``: the decoder trained online against the transform (``privacy="adversarial"``);
- ``config``: :class:`TrainConfig`, everything that defines a run, and its validation;
- ``cache``: the training set's clean activations and outputs, cached once; the step's task loss;
- ``checkpoints``: starting from an existing transform (``init``), the work folder and its checkpoint;
- ``loop``: :func:`train`, the run itself.

The public names are loaded on first use, so that importing one light module (e.g. ``losses``) does not
load the whole loop, the model registry and the data readers. The privacy half of the objective that the
generic core shares, :func:`veil.noise.privacy_loss`, lives with the noise.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.training.config import TrainConfig
    from veil.training.loop import train

__all__ = ["TrainConfig", "train"]

_WHERE = {"TrainConfig": "veil.training.config", "train": "veil.training.loop"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
