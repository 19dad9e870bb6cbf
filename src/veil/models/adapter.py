"""A server-side adapter: a few residual conv blocks that read the noisy release before the tail.

The model's own tail was built for clean features: FaceBoxes' small-face predictor is a single 3×3 conv on
the released map, which cannot pool evidence against heavy noise. The server may run more than the
original tail, and what it runs never changes what the client sends (the privacy audit), so an adapter
adds capacity exactly where the noise arrives. Each block ends in a zero-initialised 1×1 conv, so a
freshly added adapter is the identity and training starts from the tail as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from veil.errors import TransformError

PREFIX = "adapter."


class _Block(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        for param in self.body[-1].parameters():
            nn.init.zeros_(param)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ReleaseAdapter(nn.Module):
    """``blocks`` residual bottleneck blocks (1×1 → 3×3 → 1×1) at the release's resolution."""

    def __init__(self, channels: int, blocks: int = 2, hidden: int = 64) -> None:
        super().__init__()
        if blocks < 1 or hidden < 1:
            raise TransformError(
                f"an adapter needs >= 1 block and >= 1 hidden channel, got {blocks}, {hidden}"
            )
        self.shape = (channels, blocks, hidden)  # what adapter_shape reads back from a stored state
        self.blocks = nn.Sequential(*[_Block(channels, hidden) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


def adapter_shape(state: Mapping[str, Tensor]) -> tuple[int, int, int] | None:
    """(channels, blocks, hidden) of the adapter stored in a tail's state dict, or None without one."""
    keys = [k for k in state if k.startswith(PREFIX)]
    if not keys:
        return None
    try:
        first = state[f"{PREFIX}blocks.0.body.0.weight"]
        blocks = 1 + max(int(k.split(".")[2]) for k in keys)
    except (KeyError, ValueError, IndexError):
        raise TransformError(f"the stored tail's adapter entries are malformed ({keys[0]}, ...)") from None
    return int(first.shape[1]), blocks, int(first.shape[0])


def attach_adapter(tail: nn.Module, channels: int, blocks: int, hidden: int = 64) -> nn.Module:
    """Give ``tail`` an adapter of ``blocks`` blocks; returns the tail.

    A no-op if it already has one of this shape. A trained adapter of the same width with fewer blocks
    grows: its blocks are kept and the new ones start as the identity, so the tail computes what it did
    before and a further tuning pass starts from there, not from scratch.
    """
    current = getattr(tail, "adapter", None)
    if isinstance(current, ReleaseAdapter) and current.shape == (channels, blocks, hidden):
        return tail
    if not hasattr(tail, "adapter"):
        raise TransformError(f"{type(tail).__name__} cannot take a server-side adapter")
    fresh = ReleaseAdapter(channels, blocks, hidden)
    if isinstance(current, ReleaseAdapter) and current.shape[::2] == (channels, hidden):
        if current.shape[1] > blocks:
            raise TransformError(
                f"the tail's adapter has {current.shape[1]} trained blocks; dropping some would change "
                f"what it computes: use --adapter {current.shape[1]} or more"
            )
        fresh.blocks[: current.shape[1]].load_state_dict(current.blocks.state_dict())
    setattr(tail, "adapter", fresh)  # noqa: B010
    return tail


def fit_tail(tail: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Make ``tail`` able to load ``state``: attach the adapter the state carries, if any."""
    shape = adapter_shape(state)
    if shape is not None:
        attach_adapter(tail, *shape)
    return tail
