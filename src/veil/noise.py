"""The learned noise transform: what turns a head activation into something safe to send.

Each element (or each channel, for a shift-invariant transform) has its own Gaussian: the released
tensor is ``x + mu + sigma * eps`` with ``sigma = smin + (smax - smin) * (1 + tanh(rho)) / 2``
(Cloak, WWW 2021). Training pushes sigma up wherever the tail does not need the information.
Elements whose sigma ends above a threshold are *suppressed*: they are replaced by the constant mu, so
they carry nothing at all (and cost no random numbers).

Every call draws fresh noise from a generator seeded from OS entropy, so whoever receives the output
cannot predict or replay the noise; ``seed=`` exists for tests only.
"""

from __future__ import annotations

import secrets
from typing import Literal

import torch
from torch import Tensor, nn

from veil.errors import InputError

Granularity = Literal["element", "channel"]


class NoiseTransform(nn.Module):
    """``x -> x + mu + sigma * eps`` with learned per-element (or per-channel) mu and rho.

    ``shape`` is the activation's shape without the batch dimension, e.g. (128, 32, 32).
    """

    keep: Tensor  # buffer: False where an element is suppressed (replaced by mu)

    def __init__(
        self,
        shape: tuple[int, ...],
        smin: float = 0.0,
        smax: float = 4.0,
        granularity: Granularity = "element",
        rho_init: float = -1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= smin < smax:
            raise InputError(f"need 0 <= smin < smax, got smin={smin}, smax={smax}")
        if granularity not in ("element", "channel"):
            raise InputError(f"granularity must be 'element' or 'channel', got {granularity!r}")
        self.shape = tuple(int(s) for s in shape)
        self.smin, self.smax, self.granularity = float(smin), float(smax), granularity
        param_shape = (
            self.shape if granularity == "element" else (self.shape[0],) + (1,) * (len(self.shape) - 1)
        )
        self.mu = nn.Parameter(torch.zeros(param_shape))
        self.rho = nn.Parameter(torch.full(param_shape, float(rho_init)))
        self.register_buffer("keep", torch.ones(param_shape, dtype=torch.bool))
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sigma_cache: tuple[int, Tensor] | None = None

    # -- the distribution -------------------------------------------------------------------
    def sigma(self) -> Tensor:
        """Per-element standard deviation, in [smin, smax]."""
        return self.smin + (self.smax - self.smin) * (1.0 + torch.tanh(self.rho)) / 2.0

    def mean_sigma(self) -> Tensor:
        """Mean sigma over every element, the quantity the training objective raises.

        Suppressed elements count with their learned sigma (at least the suppression threshold): a mean
        over the kept elements only would *fall* as α suppresses more, hiding the extra obfuscation.
        """
        return self.sigma().expand(self.shape).mean()

    def suppress_above(self, threshold: float) -> int:
        """Replace elements with sigma > threshold by the constant mu; returns how many were suppressed."""
        with torch.no_grad():
            self.keep.copy_(self.sigma() <= threshold)
        return int((~self.keep).sum())

    @property
    def suppressed_fraction(self) -> float:
        return float((~self.keep).float().mean())

    def _frozen_sigma(self) -> Tensor:
        """sigma for inference, recomputed only when rho changed (its version counter moved)."""
        version = self.rho._version
        if (
            self._sigma_cache is None
            or self._sigma_cache[0] != version
            or self._sigma_cache[1].device != self.rho.device
        ):
            with torch.no_grad():
                self._sigma_cache = (version, self.sigma().detach())
        return self._sigma_cache[1]

    # -- sampling ---------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        # Fresh OS entropy per call (or the test seed): the receiver cannot replay the noise.
        gen.manual_seed(self._seed if self._seed is not None else secrets.randbits(63))
        return gen

    def check(self, x: Tensor) -> None:
        """One-line error for an activation of the wrong shape."""
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(
                f"activation shape {tuple(x.shape)} does not fit this transform's {('N', *self.shape)}: "
                "was it trained for another split point or input size?"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        eps = torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        if torch.is_grad_enabled() and (self.mu.requires_grad or x.requires_grad):
            out = x + self.mu + self.sigma() * eps
            return torch.where(self.keep, out, self.mu.expand_as(out))
        out = eps.mul_(self._frozen_sigma()).add_(self.mu).add_(x)  # in place: no temporaries
        if not bool(self.keep.all()):
            out = torch.where(self.keep, out, self.mu.expand_as(out))
        return out

    def extra_repr(self) -> str:
        return f"shape={self.shape}, smin={self.smin}, smax={self.smax}, granularity={self.granularity}"


def snr_db(clean: Tensor, released: Tensor) -> float:
    """Signal-to-noise ratio of a released tensor in dB: power of the signal over power of the change."""
    noise = (released - clean).pow(2).mean()
    signal = clean.pow(2).mean()
    return float(10.0 * torch.log10(signal / noise.clamp_min(1e-20)))
