"""The attacker's decoder: a fixed architecture, so reconstruction scores compare across transforms."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.errors import InputError

ARCHITECTURE = "veil-decoder/1"
BODY_SIZE = 16  # the decoder's body works at (at most) 16x16 positions whatever the input size


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class _Resize(nn.Module):
    """Bilinear resize of the (folded) activation to the decoder's square body grid (no parameters)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        down = x.shape[-2] > self.size or x.shape[-1] > self.size
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=down)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _legacy_plan(size: int, out_size: int) -> tuple[int, int] | None:
    """(fold, stages) of the original square rule (FaceBoxes' sizes), None where it does not apply."""
    fold = max(1, size // BODY_SIZE)
    base = size // fold
    stages = math.log2(out_size / base) if size > 0 and base * fold == size else -1
    return (fold, int(stages)) if stages >= 0 and stages == int(stages) else None


def plan(in_hw: tuple[int, int], out_size: int) -> tuple[int, int | None, int]:
    """(fold, body grid to resize to or None, upsampling stages) for an (h, w) activation.

    Square sizes the original rule handles (e.g. 32 -> fold 2 to 16, 3 stages to 128) keep it exactly,
    so stored attackers load. Otherwise: fold by the largest common divisor of h and w that is at most
    ceil(max(h, w) / 16), then resize bilinearly to the square grid out_size / 2^k nearest above
    min(size, 16) (ResNet-18 layer2 at 224: 28x28 -> fold 2 -> 14x14 -> 16x16 -> 3 stages to 128).
    """
    h, w = in_hw
    if h < 1 or w < 1 or out_size < 1:
        raise InputError(
            f"decoder needs an activation and an output of at least 1x1, got {h}x{w} -> {out_size}"
        )
    if h == w and (legacy := _legacy_plan(h, out_size)) is not None:
        return legacy[0], None, legacy[1]
    g, cap = math.gcd(h, w), math.ceil(max(h, w) / BODY_SIZE)
    fold = max(d for d in range(1, min(g, cap) + 1) if g % d == 0)
    size = max(h, w) // fold
    grids = [out_size >> k for k in range(out_size.bit_length()) if out_size % (1 << k) == 0]
    want = min(size, BODY_SIZE)
    above = [g_ for g_ in grids if g_ >= want]
    body = min(above) if above else max(grids)
    return fold, body, int(math.log2(out_size // body))


class Decoder(nn.Module):
    """veil-decoder/1: standardise -> (activations larger than 16x16: lossless space-to-depth down to
    16x16) -> 3x3 conv stem + 2 residual blocks -> log2(out / 16) stages of (bilinear x2, 3x3 conv, ReLU)
    halving the channels (min 16) -> 3x3 conv -> sigmoid. Capacity sits where positions are few and the
    high-resolution stages stay thin, so the cost barely depends on the audited input size.

    Any wire (C, h, w), square or not, works: sizes the square rule cannot fold to a power-of-two
    divisor of the output are folded as far as h and w allow and resized (no parameters) to a square
    grid first (:func:`plan`); the parameters, and so stored attackers, are unchanged for the others.
    ``in_size`` is an int for square activations (as stored), else (h, w).
    """

    def __init__(
        self, in_channels: int, in_size: int | Sequence[int], out_size: int, width: int = 128
    ) -> None:
        super().__init__()
        hw = (int(in_size), int(in_size)) if isinstance(in_size, int) else tuple(int(s) for s in in_size)
        if len(hw) != 2:
            raise InputError(f"decoder input size must be an int or (h, w), got {in_size!r}")
        h, w = hw
        fold, body, stages = plan((h, w), out_size)
        self.in_channels, self.out_size, self.width = in_channels, out_size, width
        self.in_hw = (h, w)
        self.in_size: int | tuple[int, int] = h if h == w else (h, w)
        self.register_buffer("in_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("in_std", torch.ones(1, in_channels, 1, 1))
        first: nn.Module = nn.PixelUnshuffle(fold) if fold > 1 else nn.Identity()
        if body is not None:  # parameter-free, so the state dict's keys are the square rule's
            first = nn.Sequential(first, _Resize(body))
        layers: list[nn.Module] = [
            first,
            nn.Conv2d(in_channels * fold * fold, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            _ResBlock(width),
            _ResBlock(width),
        ]
        ch = width
        for _ in range(stages):
            nxt = max(ch // 2, 16)
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(ch, nxt, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
            ch = nxt
        layers.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    in_mean: Tensor
    in_std: Tensor

    def set_input_stats(self, released: Tensor) -> None:
        """Per-channel standardisation from a sample of released tensors (the attacker can compute it)."""
        with torch.no_grad():
            self.in_mean.copy_(released.mean((0, 2, 3), keepdim=True))
            self.in_std.copy_(released.std((0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        x = ((x - self.in_mean) / self.in_std).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.net(x))
