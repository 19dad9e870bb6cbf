"""Server-side tail tuning for any protected model: the release stays bit for bit, the tail learns more.

Privacy depends only on what the client sends (head and noise), so the server may train its tail further,
and run more than the original tail, without invalidating the privacy audit::

    out = veil.protection.tune_tail("out/r18", model, batches, "out/r18-tuned", steps=400, adapter=64)

loads the transform (verified against ``model``), optionally puts a zero-initialised residual adapter in
front of the tail (:mod:`veil.protection.adapter`: 1x1 convs with ``adapter`` hidden channels on image
wires, linear layers on vector/token wires), and fits only the tail (and adapter) to reproduce the clean
model's outputs from releases (:func:`veil.protection.fit.fit` with ``train_noise=False``: noise and head
frozen, no suppression). The result is a transform directory whose ``release_sha256`` equals the source's
(checked before it is returned), whose ``tail.pt`` includes the adapter (``veil serve --transform`` serves
it unchanged), and whose ``tail_tuning`` field records the run; ``fit`` and ``task`` keep the source's.
FaceBoxes transforms have their own path (``veil tune-tail --weights``, :mod:`veil.training`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.artifact import load_transform
from veil.errors import InputError, TransformError
from veil.protection import store
from veil.protection.adapter import AdaptedTail, adapted, adapter_spec
from veil.protection.fit import fit
from veil.protection.objectives import LossFn


def tune_tail(
    transform: str | Path,
    model: nn.Module | None,
    batches: Iterable[Any],
    out: str | Path,
    steps: int = 200,
    *,
    adapter: int | None = None,
    lr_tail: float | None = None,
    loss: str | LossFn | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    head: nn.Module | None = None,
    tail: nn.Module | None = None,
    log_every: int = 10,
    device: str | torch.device | None = None,
) -> Path:
    """Train ``transform``'s tail (+ an adapter of ``adapter`` hidden units) on ``batches``; write ``out``.

    ``model`` (or ``head``/``tail``) is the model the transform was made for; ``batches`` as in
    :meth:`Protected.fit`. A source that already has an adapter keeps it (``adapter`` must then be None or
    its width). ``lr_tail``: default the source fit's (``fit.lr_tail``), else 1e-4: a tail that already
    matches well is easily pushed off by a larger rate. ``device``: where to train (default: where ``model``
    is). Returns ``out``.
    """
    if Path(out).resolve() == Path(transform).resolve():
        raise InputError("tune_tail: out must differ from the source transform (it is read while writing)")
    p = store.load(transform, model, head=head, tail=tail)
    if device is not None:
        p.to(device)
    source_release = str(p.meta["release_sha256"])
    current = p.meta.get("tail_adapter")
    if adapter is not None:
        spec = adapter_spec(p.meta["wire_spec"], adapter)
        if current is not None and current != spec:
            raise InputError(
                f"{transform} already has a tail adapter ({current['kind']}, {current['hidden']} hidden): "
                "tune it with adapter=None (or that width), or tune the transform it came from"
            )
        if current is None:
            p.tail = adapted(p.tail, spec).to(next(p.noise.parameters()).device)
            p.meta["tail_adapter"] = spec
    kept = {key: copy.deepcopy(p.meta.get(key)) for key in ("fit", "task")}
    if lr_tail is None:
        recorded = (kept["fit"] or {}).get("lr_tail")
        lr_tail = float(recorded) if isinstance(recorded, int | float) else 1e-4
    result = fit(
        p,
        batches,
        steps,
        lr_tail=lr_tail,
        loss=loss if loss is not None else _recorded_loss(p.meta.get("task")),
        checkpoint=checkpoint,
        progress=progress,
        train_noise=False,
        train_head=False,
        train_tail=True,
        suppress_from=1.0,
        log_every=log_every,
    )
    p.meta.update(kept)  # task is in the release spec: a tuning loss must not change the release digest
    result.update(
        {
            "source": str(transform),
            "source_release_sha256": source_release,
            "adapter": p.meta.get("tail_adapter"),
            "adapter_added": adapter is not None and current is None,
        }
    )
    for key in ("lr", "objective", "adversary_weight", "lr_head", "mean_sigma", "suppressed_fraction"):
        result.pop(key, None)
    p.meta["tail_tuning"] = result
    path = store.save(p, out)
    saved = load_transform(path).meta
    if saved.get("release_sha256") != source_release:  # cannot happen unless the release code changed
        raise TransformError(
            f"{path}: release {str(saved.get('release_sha256'))[:16]}… differs from the source's "
            f"{source_release[:16]}…: tail tuning must keep the release; report this as a bug"
        )
    return path


def _recorded_loss(task: Any) -> str | None:
    """The source's task loss when it is a built-in one; a custom loss's name needs ``loss=`` again."""
    if task in ("regression", "classification"):
        return str(task)
    raise InputError(
        f"the transform was fitted with a custom loss ({task!r}): pass the same callable as loss="
    )


__all__ = ["AdaptedTail", "tune_tail"]
