"""Input-side peers: the image is blurred or downscaled on the client before the head (no noise).

``blur`` (Gaussian, sigma in input pixels, reflect padding) and ``downscale`` (by a factor with
anti-aliasing, back up bilinearly) wrap the head, so the audit's attacker sees exactly what such a
client would send; the tail is fine-tuned on the transformed inputs for ``PeerConfig.tail_steps``
steps (0: not), distilling from the clean model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.audit.peers.common import PeerConfig, PeerTask, base, deterministic, tune_tail
from veil.protection import Protected


class InputBlur(nn.Module):
    """Client-side Gaussian blur of the model input (``sigma`` pixels, reflect padding, per channel)."""

    kernel: Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        radius = max(1, math.ceil(3 * self.sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(t**2) / (2 * max(self.sigma, 1e-6) ** 2))
        self.register_buffer("kernel", k / k.sum())
        self.radius = radius

    def forward(self, x: Tensor) -> Tensor:
        if self.sigma <= 0:
            return x
        c, r = x.shape[1], self.radius
        k = self.kernel.to(x.dtype)
        pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
        y = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        if pad < r:
            y = F.pad(y, (r - pad,) * 4, mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class InputDownscale(nn.Module):
    """Client-side downscale by ``factor`` (anti-aliased) and back up to the input size (bilinear)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: Tensor) -> Tensor:
        if self.factor <= 1:
            return x
        h, w = x.shape[-2:]
        small = (max(1, round(h / self.factor)), max(1, round(w / self.factor)))
        y = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def _wrapped(model: nn.Module, split: str, pre: nn.Module, task: PeerTask, cfg: PeerConfig) -> Protected:
    p = deterministic(base(model, split, task))
    p.head = nn.Sequential(pre, p.head).eval()
    tune_tail(p, task, cfg)
    return p


def blur(model: nn.Module, split: str, level: float, task: PeerTask, cfg: PeerConfig) -> Protected:
    """The input blurred (Gaussian, ``level`` pixels) before the head; tail fine-tuned on it."""
    p = _wrapped(model, split, InputBlur(level), task, cfg)
    p.meta["peer"] = {"blur_sigma_px": float(level), "tail_steps": cfg.tail_steps}
    return p


def downscale(model: nn.Module, split: str, level: float, task: PeerTask, cfg: PeerConfig) -> Protected:
    """The input downscaled by ``level`` and back up before the head; tail fine-tuned on it."""
    p = _wrapped(model, split, InputDownscale(level), task, cfg)
    p.meta["peer"] = {"downscale_factor": float(level), "tail_steps": cfg.tail_steps}
    return p
