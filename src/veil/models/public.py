"""The public model registry: ``veil.register_model``, entry points, and ``resolve_model``.

A model is a *factory*: a callable returning an ``nn.Module`` (optionally taking ``weights=``). Three
sources, listed together by ``veil models``:

* built-in: veil's own tasks (FaceBoxes, :mod:`veil.faceboxes`), declared as entry points of veil
  itself: the core finds them as it finds anyone's, and imports no task;
* ``veil.register_model(name, factory, ...)`` in this process;
* installed packages, under the entry-point group ``veil.models`` (``name = "pkg.module:factory"``),
  loaded only when listed or resolved; a broken one is reported in one line, never a crash.

``resolve_model`` also accepts ``package.module:factory`` for a factory nobody registered.

This module imports no torch (``veil models`` lists without it); building a model does.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import UnknownModelError, VeilError, brief

if TYPE_CHECKING:
    from torch import nn

#: The entry-point group installed packages register models under.
ENTRY_POINT_GROUP = "veil.models"

#: The distribution whose entry points are veil's own (built-in) models.
_OWN_DIST = "veil"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")

#: ``ModelEntry.task`` of a model veil knows nothing about but that it is an ``nn.Module``.
GENERIC_TASK = "generic"
#: ``ModelEntry.task`` of FaceBoxes and its registered variants (other checkpoints of the same network).
FACEBOXES_TASK = "faceboxes"
TASKS = (FACEBOXES_TASK, GENERIC_TASK)

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
    #: What the CLI's task commands may do with it: "faceboxes" (a FaceBoxes-style face detector, whose
    #: checkpoint veil's FaceBoxes pipeline builds: detect, eval, demo, sweep, FaceBoxes training), or
    #: "generic" (any nn.Module: veil train --model / veil.protect, served from its transform).
    task: str = GENERIC_TASK
    weights: str | None = None  # a task "faceboxes" entry's default checkpoint (else --weights)
    split_note: str = ""  # shown by `veil models` next to the split points (e.g. the shipped default)
    #: The task's evaluator for `veil eval --model NAME` (a model of task "generic"):
    #: ``evaluate(model, *, dataset, part, transform, alpha, server, draws, progress, **client) -> dict``
    #: where ``transform`` is a transform directory or None (clean) and ``alpha`` picks the task's shipped
    #: transform; the dict holds the metrics (``accuracy``, ``balanced_accuracy``, ``per_class``, ...)
    #: that `veil eval` prints and writes with ``--json``. None: the model has no evaluator.
    evaluate: Callable[..., dict[str, Any]] | None = None
    #: The task's shipped transform directories (``transforms() -> list of paths``), which ``veil sweep
    #: --model NAME`` evaluates when no ``--transform`` is given. None: the task ships none.
    transforms: Callable[[], list[Path]] | None = None
    #: Rows for ``veil audit`` of a vector model without ``--aux``/``--eval``: ``audit_data() -> {"aux":
    #: (N, D) array the attacker trains on, "eval": {name: (M, D) array never trained on}, "features":
    #: [D column names]}``. None: the audit needs ``--aux``/``--eval`` files.
    audit_data: Callable[[], dict[str, Any]] | None = None
    #: The task's side of ``veil audit --peers`` (peer defences on the same split, data and attacks):
    #: ``peers() -> PeerTask`` (:class:`veil.audit.peers.PeerTask`: ``score(module) -> float``, the
    #: task's metric of a module mapping model inputs to outputs; ``batches``, unlabeled model inputs
    #: to train peers on; ``normalisation``; ``to_input(images, size)``; optional ``load(path)``).
    #: None: the model has no peers hook.
    peers: Callable[[], Any] | None = None

    def example_input(self) -> Any:
        """The example batch as a Tensor (``None`` when the model declares none)."""
        example = self.example
        if callable(example):
            return example()
        if isinstance(example, tuple | list) and all(isinstance(d, int) for d in example):
            import torch

            return torch.zeros(tuple(example))
        return example


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
    task: str = GENERIC_TASK,
    weights: str | Path | None = None,
    evaluate: Callable[..., dict[str, Any]] | None = None,
) -> ModelEntry:
    """Register ``factory`` (returns an ``nn.Module``, optionally takes ``weights=``) as ``name``.

    ``split``: the split point to use by default (see ``veil.split_points``); ``example``: a batch of
    inputs (Tensor, shape tuple, or callable returning one) for ``veil.protect``. ``task="faceboxes"``
    marks a FaceBoxes variant (the same network, another checkpoint: ``weights``, its default) that
    ``veil detect`` / ``eval`` / ``demo`` / ``sweep`` accept; ``"generic"`` (default): any other model.
    A name already registered is refused unless ``overwrite=True``; built-in names cannot be replaced.
    """
    key = _check_name(name)
    task = _check_task(task, f"register_model({name!r})")
    if not callable(factory):
        raise ModelRegistryError(
            f"register_model({name!r}): factory must be callable, got {type(factory).__name__}"
        )
    if key in _builtin():
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
        task=task,
        weights=None if weights is None else str(weights),
        evaluate=evaluate,
    )
    _REGISTERED[key] = entry
    return entry


def _check_task(task: object, where: str) -> str:
    if task not in TASKS:
        raise ModelRegistryError(f"{where}: task must be one of {', '.join(TASKS)}, got {task!r}")
    return str(task)


def unregister_model(name: str) -> None:
    """Remove a model added by :func:`register_model` (no error when absent)."""
    _REGISTERED.pop(str(name).lower(), None)


_BUILTIN: dict[str, ModelEntry] = {}  # veil's own entry points, loaded once


def _builtin() -> dict[str, ModelEntry]:
    """veil's own models: the entry points the ``veil`` distribution declares (loaded on first use)."""
    if not _BUILTIN:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if getattr(getattr(ep, "dist", None), "name", None) == _OWN_DIST:
                entry = _load(ModelEntry(name=ep.name.lower(), source="built-in", target=ep.value))
                _BUILTIN[entry.name] = entry
    return _BUILTIN


def _entry_points() -> dict[str, ModelEntry]:
    """Other packages' entry points of group ``veil.models``, not loaded yet (names taken by others are
    reported broken)."""
    found: dict[str, ModelEntry] = {}
    builtin = _builtin()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if dist == _OWN_DIST:
            continue
        source = f"entry point ({dist})" if dist else "entry point"
        key = ep.name.lower()
        entry = ModelEntry(name=key, source=source, target=ep.value)
        if not _NAME.match(ep.name):
            entry.error = f"entry point name {ep.name!r} is not a valid model name"
        elif key in builtin or key in _REGISTERED:
            entry.error = f"name {key!r} is already taken by a {(builtin | _REGISTERED)[key].source} model"
        if key not in found:
            found[key] = entry
    return found


def _load(entry: ModelEntry) -> ModelEntry:
    """Import an entry point's factory (once); failures are recorded in ``entry.error``."""
    if entry.factory is None and entry.error is None:
        try:
            obj = _import_target(entry.target)
        except Exception as exc:  # a third-party package: anything may go wrong on import
            entry.error = " ".join(f"{type(exc).__name__}: {exc}".split())
        else:
            if isinstance(obj, ModelEntry):  # a whole entry (factory, split points, task) declared at once
                for name in _ENTRY_FIELDS:
                    setattr(entry, name, getattr(obj, name))
            else:
                entry.factory = obj
            _describe(entry)
    return entry


#: What an entry point that names a whole :class:`ModelEntry` declares.
_ENTRY_FIELDS = (
    "factory",
    "description",
    "split",
    "example",
    "split_points",
    "task",
    "weights",
    "split_note",
    "evaluate",
    "transforms",
    "audit_data",
    "peers",
)


def _describe(entry: ModelEntry) -> None:
    factory = entry.factory
    doc = inspect.getdoc(factory) or ""
    entry.description = entry.description or (doc.strip().splitlines()[0] if doc.strip() else "")
    entry.split = entry.split or getattr(factory, "veil_split", None)
    if entry.example is None:
        entry.example = getattr(factory, "veil_example", None)
    task = getattr(factory, "veil_task", None)
    if task is not None and entry.task == GENERIC_TASK:
        try:
            entry.task = _check_task(task, f"{entry.target or entry.name}: veil_task")
        except ModelRegistryError as exc:
            entry.error = str(exc)
    weights = getattr(factory, "veil_weights", None)
    if weights is not None and entry.weights is None:
        entry.weights = str(weights)


def list_entries(*, load: bool = True) -> list[ModelEntry]:
    """Every model veil knows: built-in, then registered, then entry points (loaded when ``load``)."""
    entries = list(_builtin().values()) + sorted(_REGISTERED.values(), key=lambda e: e.name)
    eps = sorted(_entry_points().values(), key=lambda e: e.name)
    return entries + [_load(e) if load else e for e in eps]


def known_names() -> list[str]:
    """Names :func:`resolve_model` accepts (entry points included, broken ones excluded)."""
    return [e.name for e in list_entries(load=False) if e.error is None]


def _import_factory(spec: str) -> Factory:
    obj = _import_target(spec)
    if isinstance(obj, ModelEntry) and obj.factory is not None:
        return obj.factory
    factory: Factory = obj
    return factory


def _import_target(spec: str) -> Any:
    """The object ``package.module:attr`` names: a callable factory or a :class:`ModelEntry`."""
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
    if not callable(obj) and not isinstance(obj, ModelEntry):
        raise ModelRegistryError(
            f"model spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable factory"
        )
    return obj


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
        if entry.error is not None:
            raise ModelRegistryError(f"model spec {spec!r}: {entry.error}")
        return entry
    key = spec.lower()
    builtin = _builtin()
    if key in builtin:
        entry = builtin[key]
        if entry.error is not None:
            raise ModelRegistryError(f"built-in model {key!r} ({entry.target}) is broken: {entry.error}")
        return entry
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
    """``resolve_model(spec)(weights=weights)`` (or without ``weights`` when none), in eval mode.

    Refused in one line: a factory that raises, one that returns no ``nn.Module``, and a model whose
    parameters or buffers hold NaN or infinities (a diverged checkpoint).
    """
    factory = resolve_model(spec)
    kwargs: dict[str, Any] = {}
    if weights is not None:
        try:
            params = list(inspect.signature(factory).parameters.values())
        except (TypeError, ValueError):  # no signature (some builtins): let the call decide
            params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        takes = any(p.name == "weights" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if not takes:
            raise ModelRegistryError(
                f"model {spec!r} takes no weights= argument; load weights in its factory"
            )
        kwargs["weights"] = weights
    try:
        model = factory(**kwargs)
    except VeilError:
        raise
    except Exception as exc:  # user code: anything may go wrong
        raise ModelRegistryError(
            f"model {spec!r}: its factory failed ({brief(f'{type(exc).__name__}: {exc}', 200)})"
        ) from exc
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelRegistryError(
            f"model {spec!r}: its factory returned a {type(model).__name__}, not a torch.nn.Module"
        )
    check_finite(model, spec if weights is None else f"{spec!r} with weights {weights}")
    return model.eval()


def check_finite(model: nn.Module, what: str) -> None:
    """One-line refusal when a parameter or floating buffer of ``model`` holds NaN or an infinity."""
    import torch

    bad = [
        name
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise ModelRegistryError(
            f"model {what}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]!r}): the "
            "checkpoint diverged or is corrupt; use another --weights"
        )
