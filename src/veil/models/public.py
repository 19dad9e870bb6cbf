"""The public model registry: ``veil.register_model``, entry points, and ``resolve_model``.

A model is a *factory*: a callable returning an ``nn.Module`` (optionally taking ``weights=``). Three
sources, listed together by ``veil models``:

* built-in: FaceBoxes (its spec, checkpoint layouts and split points live in :mod:`veil.models.registry`);
* ``veil.register_model(name, factory, ...)`` in this process;
* installed packages, under the entry-point group ``veil.models`` (``name = "pkg.module:factory"``),
  loaded only when listed or resolved; a broken one is reported in one line, never a crash.

``resolve_model`` also accepts ``package.module:factory`` for a factory nobody registered.

This module imports no torch (``veil models`` lists without it); building a model does.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import UnknownModelError, VeilError

if TYPE_CHECKING:
    from torch import nn

#: The entry-point group installed packages register models under.
ENTRY_POINT_GROUP = "veil.models"

#: FaceBoxes' split points (== veil.models.faceboxes.SPLIT_POINTS, kept here so listing needs no torch).
FACEBOXES_SPLIT_POINTS: tuple[str, ...] = ("rdcl", "inception1", "inception2", "inception3")

#: The transforms that ship inside the package (== veil.artifact.SHIPPED_DIR; artifact imports torch).
_SHIPPED_DIR = Path(__file__).resolve().parents[1] / "transforms"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")

Factory = Callable[..., "nn.Module"]


class ModelRegistryError(VeilError):
    """A registration or a model spec veil cannot use (the CLI prints it in one line)."""


@dataclass
class ModelEntry:
    """One model ``veil models`` lists: where it comes from and how to build it."""

    name: str
    source: str  # "built-in", "register_model", or "entry point (dist)"
    factory: Factory | None = None  # None until an entry point is loaded
    target: str = ""  # "pkg.module:factory" for entry points
    description: str = ""
    split: str | None = None  # the split to use by default, when the model declares one
    example: Any = None  # a Tensor, a shape (tuple of ints), or a callable returning a Tensor
    split_points: tuple[str, ...] = field(default_factory=tuple)  # known without tracing (built-ins)
    error: str | None = None  # why an entry point could not be loaded

    def example_input(self) -> Any:
        """The example batch as a Tensor (``None`` when the model declares none)."""
        example = self.example
        if callable(example):
            return example()
        if isinstance(example, tuple | list) and all(isinstance(d, int) for d in example):
            import torch

            return torch.zeros(tuple(example))
        return example


def _faceboxes(weights: str | Path | None = None, *, verify: bool = False) -> nn.Module:
    """FaceBoxes through the built-in spec (checkpoint layouts, verification), in eval mode."""
    from veil.models.registry import create_model

    return create_model("faceboxes", weights, verify=verify)


def shipped_default_split(model: str) -> str | None:
    """The split of the shipped default transform(s) for ``model`` (``"default": true``), if any."""
    splits: set[str] = set()
    for meta_file in sorted(_SHIPPED_DIR.glob("*/transform.json")):
        try:
            record = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if record.get("default") is True and str(record.get("model", "")).lower() == model:
            splits.add(str(record.get("split")))
    return ", ".join(sorted(splits)) or None


_BUILTIN: dict[str, ModelEntry] = {
    "faceboxes": ModelEntry(
        name="faceboxes",
        source="built-in",
        factory=_faceboxes,
        description="FaceBoxes face detector (Zhang et al., IJCB 2017), FaceBoxes.PyTorch layout",
        split_points=FACEBOXES_SPLIT_POINTS,
        example=(1, 3, 1024, 1024),
    ),
}
_REGISTERED: dict[str, ModelEntry] = {}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelRegistryError(
            f"model name {name!r} is not valid: use letters, digits, '_', '-' or '.', starting with a letter"
        )
    return name.lower()


def register_model(
    name: str,
    factory: Factory,
    *,
    split: str | None = None,
    example: Any = None,
    description: str = "",
    overwrite: bool = False,
) -> ModelEntry:
    """Register ``factory`` (returns an ``nn.Module``, optionally takes ``weights=``) as ``name``.

    ``split``: the split point to use by default (see ``veil.split_points``); ``example``: a batch of
    inputs (Tensor, shape tuple, or callable returning one) for ``veil.protect``. A name already
    registered is refused unless ``overwrite=True``; built-in names cannot be replaced.
    """
    key = _check_name(name)
    if not callable(factory):
        raise ModelRegistryError(
            f"register_model({name!r}): factory must be callable, got {type(factory).__name__}"
        )
    if key in _BUILTIN:
        raise ModelRegistryError(f"model {key!r} is built in and cannot be replaced; register another name")
    if key in _REGISTERED and not overwrite:
        raise ModelRegistryError(f"model {key!r} is already registered; pass overwrite=True to replace it")
    if not description:
        doc = inspect.getdoc(factory) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else ""
    entry = ModelEntry(
        name=key,
        source="register_model",
        factory=factory,
        split=split,
        example=example,
        description=description,
    )
    _REGISTERED[key] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove a model added by :func:`register_model` (no error when absent)."""
    _REGISTERED.pop(str(name).lower(), None)


def _entry_points() -> dict[str, ModelEntry]:
    """Entry points of group ``veil.models``, not loaded yet (names taken by others are reported broken)."""
    found: dict[str, ModelEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        source = f"entry point ({dist})" if dist else "entry point"
        key = ep.name.lower()
        entry = ModelEntry(name=key, source=source, target=ep.value)
        if not _NAME.match(ep.name):
            entry.error = f"entry point name {ep.name!r} is not a valid model name"
        elif key in _BUILTIN or key in _REGISTERED:
            entry.error = f"name {key!r} is already taken by a {(_BUILTIN | _REGISTERED)[key].source} model"
        if key not in found:
            found[key] = entry
    return found


def _load(entry: ModelEntry) -> ModelEntry:
    """Import an entry point's factory (once); failures are recorded in ``entry.error``."""
    if entry.factory is None and entry.error is None:
        try:
            entry.factory = _import_factory(entry.target)
        except Exception as exc:  # a third-party package: anything may go wrong on import
            entry.error = " ".join(f"{type(exc).__name__}: {exc}".split())
        else:
            _describe(entry)
    return entry


def _describe(entry: ModelEntry) -> None:
    factory = entry.factory
    doc = inspect.getdoc(factory) or ""
    entry.description = entry.description or (doc.strip().splitlines()[0] if doc.strip() else "")
    entry.split = entry.split or getattr(factory, "veil_split", None)
    if entry.example is None:
        entry.example = getattr(factory, "veil_example", None)


def list_entries(*, load: bool = True) -> list[ModelEntry]:
    """Every model veil knows: built-in, then registered, then entry points (loaded when ``load``)."""
    entries = list(_BUILTIN.values()) + sorted(_REGISTERED.values(), key=lambda e: e.name)
    eps = sorted(_entry_points().values(), key=lambda e: e.name)
    return entries + [_load(e) if load else e for e in eps]


def known_names() -> list[str]:
    """Names :func:`resolve_model` accepts (entry points included, broken ones excluded)."""
    return [e.name for e in list_entries(load=False) if e.error is None]


def _import_factory(spec: str) -> Factory:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr or ":" in attr:
        raise ModelRegistryError(f"model spec {spec!r} is not 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelRegistryError(f"model spec {spec!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelRegistryError(
                f"model spec {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelRegistryError(
            f"model spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable factory"
        )
    factory: Factory = obj
    return factory


def resolve_entry(spec: str) -> ModelEntry:
    """The :class:`ModelEntry` for a registered name or ``package.module:factory``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelRegistryError(
            f"model spec {spec!r} is empty: give a model name or 'package.module:factory'"
        )
    spec = spec.strip()
    if ":" in spec:
        entry = ModelEntry(name=spec, source="import", target=spec, factory=_import_factory(spec))
        _describe(entry)
        return entry
    key = spec.lower()
    if key in _BUILTIN:
        return _BUILTIN[key]
    if key in _REGISTERED:
        return _REGISTERED[key]
    eps = _entry_points()
    if key in eps:
        entry = _load(eps[key])
        if entry.error is not None:
            raise ModelRegistryError(
                f"model {key!r} ({entry.source}, {entry.target}) is broken: {entry.error}"
            )
        return entry
    raise UnknownModelError(
        f"unknown model {spec!r}: choose one of {', '.join(known_names())}, or give 'package.module:factory'"
    )


def resolve_model(spec: str) -> Factory:
    """The factory for ``spec``: a registered name (any source) or ``package.module:factory`` (imported)."""
    factory = resolve_entry(spec).factory
    assert factory is not None  # resolve_entry loads or refuses
    return factory


def build_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """``resolve_model(spec)(weights=weights)`` (or without ``weights`` when none), in eval mode."""
    factory = resolve_model(spec)
    if weights is None:
        model = factory()
    else:
        try:
            params = list(inspect.signature(factory).parameters.values())
        except (TypeError, ValueError):  # no signature (some builtins): let the call decide
            params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        takes = any(p.name == "weights" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if not takes:
            raise ModelRegistryError(
                f"model {spec!r} takes no weights= argument; load weights in its factory"
            )
        model = factory(weights=weights)
    return model.eval()
