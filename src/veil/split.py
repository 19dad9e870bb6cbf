"""Cutting a model in two, and the three-part model veil runs: head -> noise -> tail.

Models from the registry know their own split points (``model.split(at)``); any ``nn.Sequential``
can be cut after one of its named children. Anything else gets a typed error that says what to do.
"""

from __future__ import annotations

from torch import Tensor, nn

from veil.errors import SplitPointError


def split_points(model: nn.Module) -> list[str]:
    """Names that :func:`split` accepts for ``model``."""
    points = getattr(model, "split_points", None)
    if callable(points):
        return list(points())
    from veil.models.faceboxes import SPLIT_POINTS, FaceBoxes

    if isinstance(model, FaceBoxes):
        return list(SPLIT_POINTS)
    if isinstance(model, nn.Sequential):
        return [name for name, _ in model.named_children()][:-1]
    return []


def split(model: nn.Module, at: str) -> tuple[nn.Module, nn.Module]:
    """(head, tail) with ``tail(head(x)) == model(x)``; both share ``model``'s parameters."""
    own = getattr(model, "split", None)
    if callable(own):
        head, tail = own(at)
        return head, tail
    if isinstance(model, nn.Sequential):
        names = [name for name, _ in model.named_children()]
        if at not in names[:-1]:
            raise SplitPointError(
                f"cannot split {type(model).__name__} at {at!r}: "
                f"valid split points are {', '.join(names[:-1])}"
            )
        cut = names.index(at) + 1
        children = list(model.children())
        return nn.Sequential(*children[:cut]), nn.Sequential(*children[cut:])
    raise SplitPointError(
        f"{type(model).__name__} is neither a registry model nor an nn.Sequential: wrap the part that runs "
        "locally and the part that runs remotely in nn.Sequential, or add a split(at) method"
    )


class SplitModel(nn.Module):
    """head -> noise -> tail. ``release`` is exactly what leaves the trusted zone."""

    def __init__(self, head: nn.Module, noise: nn.Module | None, tail: nn.Module) -> None:
        super().__init__()
        self.head, self.tail = head, tail
        self.noise = noise if noise is not None else nn.Identity()

    def release(self, x: Tensor) -> Tensor:
        return self.noise(self.head(x))

    def forward(self, x: Tensor) -> object:
        return self.tail(self.release(x))


def split_block(model: nn.Module, at: str, blocks: int = 1) -> tuple[nn.Module, nn.Module]:
    """(head up to ``blocks`` split points before ``at``, the blocks between it and ``at``).

    ``block(pre(x)) == head(x)``, sharing ``model``'s parameters: training fine-tunes the head's last
    block through ``block`` while ``pre`` stays frozen (and its outputs can be cached).
    """
    points = split_points(model)
    if at not in points:
        raise SplitPointError(f"unknown split point {at!r}: valid split points are {', '.join(points)}")
    i = points.index(at)
    if i == 0:
        raise SplitPointError(
            f"nothing precedes split point {at!r}, so its head has no earlier part to keep frozen: "
            f"fine-tune the head at a later split ({', '.join(points[1:])})"
        )
    if not 1 <= blocks <= i:
        raise SplitPointError(
            f"split point {at!r} has {i} fine-tunable block(s) before it (the first stays frozen): "
            f"choose a block count from 1 to {i}, got {blocks}"
        )
    pre, _ = split(model, points[i - blocks])
    head, _ = split(model, at)
    stages_pre, stages = (getattr(m, "stages", m) for m in (pre, head))
    if not isinstance(stages, nn.Sequential) or not isinstance(stages_pre, nn.Sequential):
        raise SplitPointError(
            f"{type(model).__name__}'s head is not a sequence of stages: cannot fine-tune it"
        )
    return pre, nn.Sequential(*list(stages)[len(stages_pre) :])
