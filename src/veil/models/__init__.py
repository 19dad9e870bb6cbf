"""Model families veil can split, and their registries.

``veil.models.registry``: FaceBoxes' spec (build, checkpoint layouts, split points); imports torch.
``veil.models.public``: ``register_model``, entry points (group ``veil.models``), ``resolve_model``;
torch-free, so ``veil models`` lists without torch. Names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.models.public import (
        ModelEntry,
        build_model,
        list_entries,
        register_model,
        resolve_model,
    )
    from veil.models.registry import ModelSpec, create_model, get_spec, list_models, split_model

_LAZY = {
    "ModelSpec": "veil.models.registry",
    "create_model": "veil.models.registry",
    "get_spec": "veil.models.registry",
    "list_models": "veil.models.registry",
    "split_model": "veil.models.registry",
    "ModelEntry": "veil.models.public",
    "build_model": "veil.models.public",
    "list_entries": "veil.models.public",
    "register_model": "veil.models.public",
    "resolve_model": "veil.models.public",
}
__all__ = [
    "ModelEntry",
    "ModelSpec",
    "build_model",
    "create_model",
    "get_spec",
    "list_entries",
    "list_models",
    "register_model",
    "resolve_model",
    "split_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veil.models' has no attribute {name!r}")
