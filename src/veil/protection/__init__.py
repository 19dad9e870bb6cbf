"""Protect any PyTorch model: head (client) -> learned Gaussian noise -> tail (server).

    p = veil.protect(model, split="layer2", alpha=0.2, example=torch.randn(1, 3, 224, 224))
    p.fit(batches, steps=200)        # label-free: the noisy model learns to match the clean one
    p.fit(batches, steps=200, train_head=True)   # the head learns too (saved in the transform)
    p.fit(batches, objective="adversarial",      # min-max against an online decoder (image models)
          attacker=veil.audit.online.OnlineAttacker.for_protected(p, images))
    veil.protection.tune_tail("out/r18", model, batches, "out/r18-tuned", adapter=64)  # same release
    y = p(x)                         # tail(noise(head(x))), same output structure as model(x)
    r = p.release(x)                 # what leaves the trusted zone (fresh noise every call)
    r = p.release(x, sticky_key=key) # opt-in: the same x releases the same tensor (veil.sticky)
    p.save("out/r18"); q = veil.load("out/r18", model)

``protect`` copies the model: the one passed in is never changed. The clean copy (``p.teacher``) is the
target that :meth:`Protected.fit` distils from. A model that cannot be traced is given as
``protect(head=..., tail=..., example=...)`` (``tail(head(x))`` must be the model).

The noise (:class:`veil.noise.NoiseTransform`) is per channel by default: one (mu, sigma) per index of the
feature axis — axis 1 of a 4-D (B, C, H, W) activation, the last axis of (B, T, D) tokens and (B, D) vectors
(``feature_axis=`` counts axes *with* the batch) — and then works at any input size. ``granularity="element"``
gives every element its own and needs the example's size. ``smax`` (the largest sigma) defaults to
``smax_factor`` (8) times the std of the example's activation: pass an example that looks like real data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from veil.artifact import state_fingerprint
from veil.errors import InputError
from veil.noise import Granularity, NoiseTransform
from veil.protection import store
from veil.protection.fit import batch_input, fit
from veil.protection.objectives import TASKS, LossFn, check_outputs, resolve
from veil.protection.privacy import Adversary
from veil.sticky import sticky_seeds

__all__ = ["Adversary", "Protected", "load", "protect", "split_points", "tune_tail"]


class _Pair(nn.Module):
    def __init__(self, head: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.head, self.tail = head, tail

    def forward(self, x: Tensor) -> Any:
        return self.tail(self.head(x))


class Protected(nn.Module):
    """``tail(noise(head(x)))``; ``teacher`` is the frozen clean model that :meth:`fit` distils from."""

    def __init__(
        self,
        head: nn.Module,
        noise: NoiseTransform,
        tail: nn.Module,
        teacher: nn.Module,
        *,
        alpha: float,
        split: str | None,
        task: str,
        meta: dict[str, Any],
    ) -> None:
        super().__init__()
        self.head, self.noise, self.tail, self.teacher = head, noise, tail, teacher
        self.alpha, self.split, self.task, self.meta = alpha, split, task, meta
        self.head_trained = False
        self.history: list[list[float]] = []

    def forward(self, x: Tensor) -> Any:
        return self.tail(self.noise(self.head(x)))

    def release(self, x: Tensor, sticky_key: bytes | None = None) -> Tensor:
        """What leaves the trusted zone: ``noise(head(x))``, without grad, in eval mode, fresh noise.

        ``sticky_key`` (:mod:`veil.sticky`): each sample's noise comes from the key and that sample of ``x``
        instead, so sending the same input again releases the same tensor (same distribution, same digest).
        """
        seeds = None if sticky_key is None else sticky_seeds(sticky_key, x)
        modes = [(m, m.training) for m in (self.head, self.noise)]
        try:
            with torch.no_grad():
                self.head.eval(), self.noise.eval()
                out: Tensor = self.noise(self.head(x), seeds=seeds)
                return out
        finally:
            for m, mode in modes:
                m.train(mode)

    def fit(
        self, batches: Iterable[Any], steps: int = 200, lr: float = 0.05, **options: Any
    ) -> dict[str, Any]:
        """Train noise and tail; :func:`veil.protection.fit.fit` lists ``options`` (loss, checkpoint, ...)."""
        return fit(self, batches, steps, lr, **options)

    def evaluate(self, batches: Iterable[Any], loss: str | LossFn | None = None) -> float:
        """Mean task loss of the noisy model against the clean one over ``batches`` (fresh noise)."""
        _, fn = resolve(loss, self.task)
        dev = next(self.noise.parameters()).device
        total, count = 0.0, 0
        self.eval()
        with torch.no_grad():
            for batch in batches:
                x = batch_input(batch).to(dev)
                total += float(fn(self(x), self.teacher(x), batch))
                count += 1
        if not count:
            raise InputError("evaluate: batches is empty")
        return total / count

    def save(self, out: str | Path) -> Path:
        """Write a transform directory (see :mod:`veil.protection.store`)."""
        return store.save(self, out)


def _feature_axis(axis: int | None, rank: int) -> int:
    """The noise's axis (without batch, non-negative) from the user's (with batch)."""
    if axis is None:
        axis = 1 if rank == 4 else -1
    if not -rank <= axis < rank or axis % rank == 0:
        raise InputError(
            f"feature_axis {axis} is not a feature axis of a {rank}-D activation (axis 0 is the batch)"
        )
    return axis % rank - 1


def protect(
    model: nn.Module | None = None,
    split: str | None = None,
    alpha: float = 0.2,
    example: Tensor | None = None,
    *,
    head: nn.Module | None = None,
    tail: nn.Module | None = None,
    granularity: str = "channel",
    feature_axis: int | None = None,
    task: str = "regression",
    name: str | None = None,
    smax: float | None = None,
    smax_factor: float = 8.0,
    normalisation: dict[str, Any] | None = None,
) -> Protected:
    """Split ``model`` at ``split`` (or take ``head``/``tail``) and put untrained noise between the parts.

    ``example``: a batch of inputs (its shape without batch and its dtype become the input spec).
    ``task``: the default loss of :meth:`Protected.fit` (``"regression"`` or ``"classification"``).
    ``normalisation``: recorded for the client (e.g. ``{"mean": [...], "std": [...]}``), not applied.
    ``name``: the Triton model names' stem (default: the model's class name in lower case).
    """
    if not isinstance(example, Tensor) or example.dim() < 1:
        raise InputError("protect needs example=: a batch of inputs, e.g. torch.randn(1, 3, 224, 224)")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and 0.0 <= alpha < 1.0):
        raise InputError(f"alpha must be a finite number >= 0 and < 1, got {alpha}")
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if granularity not in ("channel", "element"):
        raise InputError(f"granularity must be channel or element, got {granularity!r}")
    if model is not None and (head is None) == (tail is None) and head is None:
        if split is None:
            raise InputError(f"protect needs split=: one of {', '.join(split_points(model, example))}")
        from veil.split.graph import cut

        teacher: nn.Module = copy.deepcopy(model)
        fingerprint = state_fingerprint(model)
        h, t = cut(copy.deepcopy(model), split, example)
        stem = type(model).__name__.lower()
    elif model is None and head is not None and tail is not None:
        teacher = _Pair(copy.deepcopy(head), copy.deepcopy(tail))
        fingerprint = store.pair_fingerprint(head, tail)
        h, t = copy.deepcopy(head), copy.deepcopy(tail)
        stem, split = "model", None
    else:
        raise InputError(
            "protect takes a model and split=, or head= and tail= (a model that cannot be traced)"
        )
    teacher.eval().requires_grad_(False)
    h.eval().requires_grad_(False)
    t.eval().requires_grad_(False)
    with torch.no_grad():
        act = h(example)
        outputs = teacher(example)
    if not isinstance(act, Tensor) or not act.is_floating_point() or act.dim() < 2:
        raise InputError(
            f"the head must give one floating-point (B, ...) tensor, got {type(act).__name__}: "
            "split where a single activation crosses"
        )
    check_outputs(outputs)
    axis = _feature_axis(feature_axis, act.dim())
    gran: Granularity = "element" if granularity == "element" else "channel"
    top = float(smax) if smax is not None else smax_factor * float(act.float().std())
    if not (math.isfinite(top) and top > 0):
        raise InputError(
            f"smax must be a finite number > 0 (got {top}): pass smax= or a non-constant example"
        )
    noise = NoiseTransform(tuple(act.shape[1:]), smin=0.0, smax=top, granularity=gran, feature_axis=axis)
    noise = noise.to(act.device)
    meta = {
        "model": type(model).__name__ if model is not None else "head+tail",
        "model_fingerprint": fingerprint,
        "split": split,
        "task": task,
        "feature_axis": axis,
        "input_spec": store.input_spec(example, normalisation),
        "wire_spec": store.wire_spec(act, axis, granularity),
        "output_spec": store.output_spec(outputs),
        "triton": store.triton_names(name or stem),
        "smax_factor": None if smax is not None else smax_factor,
    }
    p = Protected(h, noise, t, teacher, alpha=float(alpha), split=split, task=task, meta=meta)
    return p.eval()


def split_points(model: nn.Module, example: Tensor) -> list[str]:
    """The names ``protect(model, split=...)`` accepts, in execution order."""
    from veil.split.graph import split_points as graph_split_points

    return list(graph_split_points(model, example))


#: ``veil.load``: verify a saved transform and rebuild the protected model around ``model``.
load = store.load

from veil.protection.tune import tune_tail  # noqa: E402  (tune imports this package's store and fit)
