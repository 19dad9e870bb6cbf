"""The learned noise transform: what turns a head activation into something safe to send.

Each element (or each channel, for a shift-invariant transform) has its own Gaussian: the released
tensor is ``x + mu + sigma * eps`` with ``sigma = smin + (smax - smin) * (1 + tanh(rho)) / 2``
(Cloak, WWW 2021). Training pushes sigma up wherever the tail does not need the information.
Elements whose sigma ends above a threshold are *suppressed*: they are replaced by the constant mu, so
they carry nothing at all (and cost no random numbers).

``granularity="conditional"`` makes sigma depend on the activation itself: a small network (:class:`SigmaNet`)
adds a per-element offset to the per-channel rho, so an image whose content the tail barely needs (a close-up
face, detected from coarse features) can get more noise than a crowd of small faces. The network runs on the
client; an attacker is assumed to know it, but not the clean activation it was applied to.

Any rank: ``shape`` is the activation without its batch dimension — (C, H, W) images, (T, D) token sequences,
(D,) vectors. A per-channel transform has one (mu, rho) per index of ``feature_axis`` (an axis of ``shape``;
default 0, the channels of an image; ``-1`` for tokens: one per feature, shared by every position) and works
at any size along the other axes; a per-element transform needs exactly ``shape``.

Every release on the CPU draws fresh noise from the operating system's cryptographic source
(:mod:`veil.entropy`: ``os.urandom``), never from a seeded ``torch`` CPU generator, which keeps only 32 bits
of its seed; on a GPU, from the CUDA generator (Philox, which keeps the whole 63-bit seed drawn from OS
entropy per call, far beyond search). Whoever receives the output cannot predict, replay or search for the
noise. Training steps (training mode with gradients on, noise that never leaves the machine) use the seeded
generator; ``seed=`` makes every path reproducible, for tests only. Opt-in sticky noise
(``forward(x, seeds=...)``, :mod:`veil.sticky`) gives a repeated input the same noise instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from veil.entropy import secure_normal
from veil.errors import InputError
from veil.sticky import sticky_eps

Granularity = Literal["element", "channel", "conditional"]
GRANULARITIES = ("element", "channel", "conditional")


class SigmaNet(nn.Module):
    """The activation-dependent part of rho: local context (3x3 conv) plus the whole image (pooled).

    Its output layers start at zero, so an untrained conditional transform is exactly a per-channel one.
    """

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        out = nn.Conv2d(hidden, channels, 1)
        self.local = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), out)
        self.pooled = nn.Linear(channels, channels)
        for param in (*out.parameters(), *self.pooled.parameters()):
            nn.init.zeros_(param)

    def forward(self, x: Tensor) -> Tensor:
        return self.local(x) + self.pooled(x.mean((2, 3)))[..., None, None]


class NoiseTransform(nn.Module):
    """``x -> x + mu + sigma * eps`` with learned per-element (or per-channel) mu and rho.

    ``shape`` is the activation's shape without the batch dimension, e.g. (128, 32, 32) or (T, D).
    ``feature_axis`` (per-channel only, an axis of ``shape``) is the axis with its own (mu, rho).
    """

    keep: Tensor  # buffer: False where an element is suppressed (replaced by mu)
    typical_sigma: Tensor  # buffer (stored only when conditional)

    def __init__(
        self,
        shape: tuple[int, ...],
        smin: float = 0.0,
        smax: float = 4.0,
        granularity: Granularity = "element",
        rho_init: float = -1.0,
        seed: int | None = None,
        feature_axis: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= smin < smax:
            raise InputError(f"need 0 <= smin < smax, got smin={smin}, smax={smax}")
        if granularity not in GRANULARITIES:
            raise InputError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        self.shape = tuple(int(s) for s in shape)
        self.smin, self.smax, self.granularity = float(smin), float(smax), granularity
        if not self.shape or not -len(self.shape) <= int(feature_axis) < len(self.shape):
            raise InputError(
                f"feature_axis {feature_axis} is not an axis of the activation shape {self.shape}"
            )
        self.feature_axis = int(feature_axis) % len(self.shape)  # stored non-negative
        if granularity == "conditional" and (len(self.shape) != 3 or self.feature_axis != 0):
            raise InputError("granularity 'conditional' needs (C, H, W) activations with feature_axis 0")
        param_shape = self.shape
        if granularity != "element":
            param_shape = tuple(s if i == self.feature_axis else 1 for i, s in enumerate(self.shape))
        self.mu = nn.Parameter(torch.zeros(param_shape))
        self.rho = nn.Parameter(torch.full(param_shape, float(rho_init)))
        self.register_buffer("keep", torch.ones(param_shape, dtype=torch.bool))
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sigma_cache: tuple[tuple[int, ...], Tensor, bool] | None = None
        self.net = SigmaNet(self.shape[0]) if granularity == "conditional" else None
        # conditional: the mean sigma over the training activations, set when training ends (reports quote it)
        self.register_buffer("typical_sigma", torch.zeros(()), persistent=self.net is not None)
        self.last_sigma: Tensor | None = None  # conditional, training: the last batch's sigma (with grad)

    # -- the distribution -------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return self.net is not None

    def sigma(self, x: Tensor | None = None) -> Tensor:
        """Standard deviation in [smin, smax]: per element/channel, or for activation ``x`` (conditional).

        A conditional transform without ``x`` gives its per-channel part (the network's offset at zero).
        """
        rho = self.rho if x is None or self.net is None else self.rho + self.net(x)
        return self.smin + (self.smax - self.smin) * (1.0 + torch.tanh(rho)) / 2.0

    def batch_sigma(self) -> Tensor:
        """The sigma the training objective raises: the last batch's (conditional) or the learned one."""
        if self.net is not None:
            if self.last_sigma is None:
                raise RuntimeError("conditional transform: call it on a batch before batch_sigma()")
            return self.last_sigma
        return self.sigma()

    def mean_sigma(self) -> Tensor:
        """Mean sigma over every element, the quantity the training objective raises.

        Suppressed elements count with their learned sigma (at least the suppression threshold): a mean
        over the kept elements only would *fall* as α suppresses more, hiding the extra obfuscation.
        A conditional transform reports the mean over the activations it saw in training.
        """
        if self.net is not None:
            return self.typical_sigma.clone()
        return self.sigma().expand(self.shape).mean()

    def sigma_floor(self) -> float:
        """The smallest sigma any kept element gets (a conditional transform: ``smin``, its bound).

        Recorded in a transform (inside its release digest) so a client can refuse a noise module that
        adds less than the release it was audited with; 0.0 when every element is suppressed.
        """
        if self.net is not None:
            return self.smin
        with torch.no_grad():
            kept = self.sigma().expand_as(self.keep)[self.keep]
        return float(kept.min()) if kept.numel() else 0.0

    def suppress_above(self, threshold: float, max_fraction: float = 1.0) -> int:
        """Replace elements with sigma > threshold by the constant mu; returns how many were suppressed.

        ``max_fraction`` caps the suppressed share: past it only the noisiest elements are suppressed,
        so a strong alpha cannot leave the server (almost) nothing to detect from.
        """
        with torch.no_grad():
            sigma = self.sigma().expand_as(self.keep)
            drop = sigma > threshold
            most = int(max_fraction * drop.numel())
            if int(drop.sum()) > most:
                drop = torch.zeros_like(drop).flatten()
                drop[sigma.flatten().topk(most).indices] = True
                drop = drop.view_as(self.keep)
            self.keep.copy_(~drop)
        return int((~self.keep).sum())

    @property
    def suppressed_fraction(self) -> float:
        return float((~self.keep).float().mean())

    def _frozen(self) -> tuple[Tensor, bool]:
        """(sigma, every element kept?) for inference, recomputed only when rho or the mask changed.

        Keyed on the tensors' version counters and storage, so neither a GPU-to-CPU sync (``keep.all()``)
        nor the tanh runs per request.
        """
        key = (self.rho._version, self.rho.data_ptr(), self.keep._version, self.keep.data_ptr())
        if self._sigma_cache is None or self._sigma_cache[0] != key:
            with torch.no_grad():
                self._sigma_cache = (key, self.sigma().detach(), bool(self.keep.all()))
        return self._sigma_cache[1], self._sigma_cache[2]

    # -- sampling ---------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed(self._seed if self._seed is not None else secrets.randbits(63))
        return gen

    def _fresh(self, x: Tensor) -> Tensor:
        """Fresh N(0, 1) noise shaped like ``x``: from ``os.urandom`` for anything that may be released."""
        training = self.training and torch.is_grad_enabled()
        if self._seed is not None or training or x.device.type == "cuda":  # CUDA keeps all 63 bits of a seed
            return torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        return secure_normal(x.shape, x.dtype, x.device)

    def check(self, x: Tensor) -> None:
        """One-line error for an activation of the wrong shape (per-channel: of the wrong rank or width)."""
        if self.granularity == "channel" and x.dim() == len(self.shape) + 1:
            axis = self.feature_axis
            if x.shape[axis + 1] == self.shape[axis]:
                return  # any size along the other axes
            raise InputError(
                f"activation shape {tuple(x.shape)} has {x.shape[axis + 1]} features on axis {axis + 1}, "
                f"this transform {self.shape[axis]}: was it trained for another split point or model?"
            )
        if tuple(x.shape[1:]) != self.shape:
            if self.granularity == "element" and x.dim() == len(self.shape) + 1:
                raise InputError(
                    f"activation shape {tuple(x.shape)} does not fit this transform's {('N', *self.shape)}: "
                    "a per-element transform needs that exact input size (a per-channel one takes any)"
                )
            raise InputError(
                f"activation shape {tuple(x.shape)} does not fit this transform's {('N', *self.shape)}: "
                "was it trained for another split point or input size?"
            )

    def forward(self, x: Tensor, seeds: Sequence[int] | None = None) -> Tensor:
        """One release of ``x``: fresh noise, or with ``seeds`` (one per sample) sticky noise.

        ``seeds`` (:func:`veil.sticky.sticky_seeds`): sample i's eps comes from its own stream of
        ``seeds[i]`` (:func:`veil.sticky.sticky_eps`), whatever else is in the batch; the distribution
        of each release is the same as without them.
        """
        self.check(x)
        if seeds is None:
            eps = self._fresh(x)
        else:
            if len(seeds) != x.shape[0]:
                raise InputError(
                    f"{len(seeds)} sticky seeds for a batch of {x.shape[0]}: give one per sample"
                )
            eps = sticky_eps(x.shape[1:], seeds, x.dtype, x.device)
        if self.net is not None:
            sigma = self.sigma(x)
            if torch.is_grad_enabled():
                self.last_sigma = sigma
            out = x + self.mu + sigma * eps
            return torch.where(self.keep, out, self.mu.expand_as(out))
        if torch.is_grad_enabled() and (self.mu.requires_grad or x.requires_grad):
            out = x + self.mu + self.sigma() * eps
            return torch.where(self.keep, out, self.mu.expand_as(out))
        sigma, all_kept = self._frozen()
        out = torch.addcmul(self.mu, eps, sigma, out=eps).add_(x)  # two fused passes, no temporaries
        return out if all_kept else torch.where(self.keep, out, self.mu.expand_as(out))

    def load_tensors(self, tensors: dict[str, Tensor], prefix: str) -> NoiseTransform:
        """Load this transform's state from ``tensors`` whose keys start with ``prefix`` (a stored file)."""
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        state["keep"] = state["keep"].bool()
        self.load_state_dict(state)
        return self

    def extra_repr(self) -> str:
        axis = f", feature_axis={self.feature_axis}" if self.feature_axis else ""
        return f"shape={self.shape}, smin={self.smin}, smax={self.smax}, granularity={self.granularity}{axis}"


def snr_db(clean: Tensor, released: Tensor) -> float:
    """Signal-to-noise ratio of a released tensor in dB: power of the signal over power of the change."""
    noise = (released - clean).pow(2).mean()
    signal = clean.pow(2).mean()
    return float(10.0 * torch.log10(signal / noise.clamp_min(1e-20)))


def privacy_loss(
    noise: NoiseTransform, channel_std: Tensor | None = None, per_request: bool = False
) -> Tensor:
    """-log(mean sigma): more noise is better, with diminishing returns.

    ``per_request`` (conditional transforms, whose sigma differs per request): the mean over requests of
    -log(that request's mean sigma), so the diminishing returns apply to each request and a nearly clean
    request costs more than a very noisy one gains.

    With ``channel_std`` ([C, 1, 1]): -mean log(sigma / std) instead, diminishing returns *per channel*
    relative to its own signal, so no channel can stay nearly clean while others absorb the noise.
    """
    sigma = noise.batch_sigma()
    if channel_std is None:
        if per_request:  # sigma is [N, C, H, W]: one mean per request
            return -torch.log(sigma.flatten(1).mean(1)).mean()
        return -torch.log(sigma.mean())
    return -torch.log(sigma / channel_std + 1e-6).mean()
