"""A server-side adapter for any protected model's tail: a small residual block that reads the release first.

The tail was built for clean activations; the server may run more than the original tail, and what it runs
never changes what the client sends (head and noise, ``release_sha256``). An adapter adds capacity exactly
where the noise arrives: ``x + W2 relu(W1 x)`` along the wire's feature axis — 1x1 convolutions for image
wires ``(B, C, h, w)`` with channels on axis 1, linear layers for vector ``(B, D)`` and token ``(B, T, D)``
wires (or any other feature axis). ``W2`` starts at zero, so a fresh adapter is the identity and tuning
starts from the tail as it was.

:class:`AdaptedTail` is ``tail(adapter(release))``; its state dict is ``adapter.*`` + ``tail.*``, and the
transform's ``tail_adapter`` field (:func:`adapter_spec`, covered by ``meta_sha256``) tells
:func:`veil.load` to rebuild it (:func:`from_spec`). ``tail.pt`` traces the whole, so ``veil serve`` runs it
unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from veil.errors import InputError, TransformError

KINDS = ("conv1x1", "linear")


def _zero(layer: nn.Conv2d | nn.Linear) -> None:
    """The block's last layer starts at zero: a fresh adapter is the identity."""
    for param in layer.parameters():
        nn.init.zeros_(param)


class ConvAdapter(nn.Module):
    """``x + conv1x1(relu(conv1x1(x)))`` on ``(B, C, h, w)`` (any h, w)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        out = nn.Conv2d(hidden, channels, 1)
        _zero(out)
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), out)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class LinearAdapter(nn.Module):
    """``x + W2 relu(W1 x)`` along axis ``axis`` (counted with the batch) of any-rank ``x``."""

    def __init__(self, features: int, hidden: int, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)
        out = nn.Linear(hidden, features)
        _zero(out)
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), out)

    def forward(self, x: Tensor) -> Tensor:
        y = x.movedim(self.axis, -1)
        return (y + self.body(y)).movedim(-1, self.axis)


class AdaptedTail(nn.Module):
    """``tail(adapter(release))``: what the server runs after tail tuning with an adapter."""

    def __init__(self, adapter: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.adapter, self.tail = adapter, tail

    def forward(self, release: Tensor) -> Any:
        return self.tail(self.adapter(release))


def adapter_spec(wire_spec: dict[str, Any], hidden: int) -> dict[str, Any]:
    """The ``tail_adapter`` record for a wire: 1x1 convs for (C, h, w) with channels first, else linear."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise InputError(f"adapter must be a whole number of hidden channels >= 1, got {hidden!r}")
    shape = [int(s) for s in wire_spec["shape"]]
    axis = int(wire_spec["feature_axis"])
    kind = "conv1x1" if len(shape) == 3 and axis == 0 else "linear"
    return {"kind": kind, "features": shape[axis], "hidden": hidden, "axis": axis + 1}


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """The (fresh) adapter a ``tail_adapter`` record describes."""
    try:
        kind, features, hidden = str(spec["kind"]), int(spec["features"]), int(spec["hidden"])
        axis = int(spec["axis"])
    except (KeyError, TypeError, ValueError):
        raise TransformError(f"malformed tail_adapter record {spec!r}: restore the transform") from None
    if kind == "conv1x1":
        return ConvAdapter(features, hidden)
    if kind == "linear":
        return LinearAdapter(features, hidden, axis)
    raise TransformError(f"unknown tail_adapter kind {kind!r} (known: {', '.join(KINDS)}): update veil")


def adapted(tail: nn.Module, spec: dict[str, Any]) -> AdaptedTail:
    """``tail`` behind a fresh adapter of ``spec`` (its weights come from the transform's ``tail.*``)."""
    return AdaptedTail(from_spec(spec), tail)
