"""The attacker's decoder: a fixed architecture, so reconstruction scores compare across transforms."""

from __future__ import annotations

import math

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


class Decoder(nn.Module):
    """veil-decoder/1: standardise -> (activations larger than 16x16: lossless space-to-depth down to
    16x16) -> 3x3 conv stem + 2 residual blocks -> log2(out / 16) stages of (bilinear x2, 3x3 conv, ReLU)
    halving the channels (min 16) -> 3x3 conv -> sigmoid. Capacity sits where positions are few and the
    high-resolution stages stay thin, so the cost barely depends on the audited input size.
    """

    def __init__(self, in_channels: int, in_size: int, out_size: int, width: int = 128) -> None:
        super().__init__()
        fold = max(1, in_size // BODY_SIZE)
        base = in_size // fold
        stages = math.log2(out_size / base) if in_size > 0 and base * fold == in_size else -1
        if stages < 0 or stages != int(stages):
            raise InputError(
                f"decoder needs output size / activation size to be a power of two, got {out_size}/{in_size}"
            )
        self.in_channels, self.in_size, self.out_size, self.width = in_channels, in_size, out_size, width
        self.register_buffer("in_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("in_std", torch.ones(1, in_channels, 1, 1))
        layers: list[nn.Module] = [
            nn.PixelUnshuffle(fold) if fold > 1 else nn.Identity(),
            nn.Conv2d(in_channels * fold * fold, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            _ResBlock(width),
            _ResBlock(width),
        ]
        ch = width
        for _ in range(int(stages)):
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
