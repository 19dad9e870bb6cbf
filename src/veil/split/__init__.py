"""Cutting a model in two, and the three-part model veil runs: head -> noise -> tail.

Models that know their own split points (FaceBoxes) offer ``model.split_points()`` and
``model.split(at)``; any ``nn.Sequential``
can be cut after one of its named children. Anything else gets a typed error that says what to do.
"""

from __future__ import annotations

from torch import Tensor, nn

from veil.errors import SplitPointError
from veil.split.graph import cut as cut  # the graph cut for any torch.fx-traceable model
from veil.split.graph import split_points as graph_split_points  # noqa: F401


def split_points(model: nn.Module) -> list[str]:
    """Names that :func:`split` accepts for ``model``."""
    points = getattr(model, "split_points", None)
    if callable(points):
        return list(points())
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


def _head_units(model: nn.Module, at: str) -> list[nn.Module]:
    """The head up to ``at`` as fine-tunable units, in order: its stages, the first one cut in its halves
    where it offers them (FaceBoxes' RDCL: conv1 | conv2), so that every split has a block to train."""
    points = split_points(model)
    if at not in points:
        raise SplitPointError(f"unknown split point {at!r}: valid split points are {', '.join(points)}")
    head, _ = split(model, at)
    stages = getattr(head, "stages", head)
    if not isinstance(stages, nn.Sequential):
        raise SplitPointError(
            f"{type(model).__name__}'s head is not a sequence of stages: cannot fine-tune it"
        )
    units = list(stages)
    halves = getattr(units[0], "halves", None)
    if callable(halves):
        units[:1] = list(halves())
    return units


def head_blocks_available(model: nn.Module, at: str) -> int:
    """How many blocks before ``at`` training may fine-tune (the head's first unit stays frozen)."""
    return len(_head_units(model, at)) - 1


def split_block(model: nn.Module, at: str, blocks: int = 1) -> tuple[nn.Module, nn.Module]:
    """(the frozen start of the head, the last ``blocks`` blocks before ``at``).

    ``block(pre(x)) == head(x)``, sharing ``model``'s parameters: training fine-tunes the head's last
    block(s) through ``block`` while ``pre`` stays frozen (and its outputs can be cached).
    """
    units = _head_units(model, at)
    n = len(units) - 1
    if n == 0:
        raise SplitPointError(
            f"nothing precedes split point {at!r}, so its head has no earlier part to keep frozen: "
            "fine-tune the head at a later split"
        )
    if not 1 <= blocks <= n:
        raise SplitPointError(
            f"split point {at!r} has {n} fine-tunable block(s) before it (the first stays frozen): "
            f"choose a block count from 1 to {n}, got {blocks}"
        )
    return nn.Sequential(*units[:-blocks]), nn.Sequential(*units[-blocks:])
