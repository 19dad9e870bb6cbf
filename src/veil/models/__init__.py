"""The model registry every part of veil shares; it knows no task.

``veil.models.public``: ``register_model``, entry points (group ``veil.models``: veil's own tasks such as
FaceBoxes, :mod:`veil.faceboxes`, register there too), ``resolve_model`` and ``build_model``; torch-free,
so ``veil models`` lists without torch. ``veil.models.checkpoint``: reading state dicts in any key layout.
``veil.models.adapter``: the 1x1 adapter a server-side tail may learn in front of the tail.
Names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from veil.models.public import (
        ModelEntry,
        build_model,
        list_entries,
        register_model,
        resolve_entry,
        resolve_model,
    )

_LAZY = {
    "ModelEntry": "veil.models.public",
    "build_model": "veil.models.public",
    "list_entries": "veil.models.public",
    "register_model": "veil.models.public",
    "resolve_entry": "veil.models.public",
    "resolve_model": "veil.models.public",
}
__all__ = [
    "ModelEntry",
    "build_model",
    "list_entries",
    "register_model",
    "resolve_entry",
    "resolve_model",
    "split_model",
]


def split_model(model: nn.Module, at: str) -> tuple[nn.Module, nn.Module]:
    """(head, tail) of a model that declares its own split points (``model.split(at)``, as FaceBoxes
    does); ``tail(head(x)) == model(x)``. Any other model: ``veil.protect`` cuts it with torch.fx."""
    from veil.errors import UnknownModelError

    split = getattr(model, "split", None)
    if not callable(split):
        raise UnknownModelError(
            f"{type(model).__name__} offers no split points of its own: protect it with veil.protect"
        )
    head, tail = split(at)
    return head, tail


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veil.models' has no attribute {name!r}")
