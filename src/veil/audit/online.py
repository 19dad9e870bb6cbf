"""An attacker trained *during* :meth:`veil.protection.Protected.fit`, for any image model.

``-log mean sigma`` rewards noise wherever the task does not need it, which is not the same as where an
attacker finds the input: the most useful channels stay nearly clean and a decoder recovers a coarse image
from them. With ``fit(objective="adversarial", attacker=OnlineAttacker.for_protected(p, images))`` a
decoder (the audit's ``veil-decoder/1``, :class:`veil.audit.decoder.Decoder`, thinner) learns online to
reconstruct the fit's own input images from the step's release (fresh noise every step), and the noise
is rewarded for raising that decoder's loss up to what the mean image scores (no information): the
min-max game of ``veil train --privacy adversarial`` (:mod:`veil.training.adversary`), for any model.

Sizing comes from the transform, not from FaceBoxes' constants: the decoder reads the wire ``(C, h, w)``
the head gives at the images' input size ``(H, W)`` and outputs ``output_size`` squared (default: the
largest power of two <= min(H, W), between 16 and 64); targets are the inputs mapped back to ``[0, 1]``
(the transform's recorded normalisation ``{"mean", "std"}``, 0-255 statistics when a mean
exceeds 1, as ``veil audit`` reads it; else the images' per-channel range) and resized to that size.

The attacker knows mu and sigma, so neither a shifted mu nor a rescaled channel counts as privacy: each
release is standardised per channel with its batch's statistics before decoding. Under ``torchrun`` each
rank trains its own decoder (seed + rank), as ``veil train`` does. Image wires only (``(B, C, h, w)``
with channels first); fit's checkpoint stores :meth:`state_dict`, so a resumed fit resumes the game.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.audit.decoder import Decoder
from veil.audit.metrics import ssim
from veil.device import dist_info
from veil.errors import InputError

if TYPE_CHECKING:
    from veil.protection import Protected

__all__ = ["OnlineAttacker"]


def _loss(pred: Tensor, target: Tensor, ssim_weight: float) -> Tensor:
    """The audit's reconstruction loss: L1 + ssim_weight * (1 - SSIM)."""
    loss = F.l1_loss(pred, target)
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, target).mean())
    return loss


def default_output_size(height: int, width: int) -> int:
    """The largest power of two <= min(H, W), kept in [16, 64] (16: the SSIM window needs 11)."""
    side = max(1, min(height, width))
    return int(min(64, max(16, 1 << (side.bit_length() - 1))))


class _SquareDecoder(nn.Module):
    """``Decoder`` for an (h, w) wire even where the installed Decoder takes square sizes only."""

    def __init__(self, channels: int, hw: tuple[int, int], out_size: int, width: int) -> None:
        super().__init__()
        h, w = hw
        self.grid: tuple[int, int] | None = None
        if h == w:
            self.decoder = Decoder(channels, h, out_size, width)
            return
        try:
            self.decoder = Decoder(channels, (h, w), out_size, width)
        except (TypeError, InputError):  # a square-only Decoder: resize to a power-of-two square first
            side = min(out_size, 1 << (max(h, w).bit_length() - 1))
            self.grid = (side, side)
            self.decoder = Decoder(channels, side, out_size, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.grid is not None:
            x = F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False)
        out: Tensor = self.decoder(x)
        return out


class OnlineAttacker:
    """A decoder that chases the noise in :meth:`Protected.fit` (implements
    :class:`veil.protection.privacy.Adversary`).

    ``wire``: the release's ``(C, h, w)`` at input size ``input_hw`` (H, W). ``to_unit`` maps a batch of
    model inputs to images in ``[0, 1]`` (default: identity, clamped). ``steps``: decoder updates per fit
    step (a stronger chaser). Build it with :meth:`for_protected` rather than by hand.
    """

    def __init__(
        self,
        wire: tuple[int, int, int],
        input_hw: tuple[int, int],
        *,
        output_size: int | None = None,
        width: int = 64,
        lr: float = 2e-3,
        ssim_weight: float = 0.5,
        steps: int = 1,
        seed: int = 0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(wire) != 3 or min(wire) < 1:
            raise InputError(
                f"the online attacker decodes image wires (C, h, w), got {tuple(wire)}: "
                "split the model where a (B, C, h, w) feature map crosses"
            )
        if steps < 1 or width < 1 or not (math.isfinite(lr) and lr > 0):
            raise InputError(f"online attacker: steps, width >= 1 and lr > 0, got {steps}, {width}, {lr}")
        self.wire: tuple[int, int, int] = (int(wire[0]), int(wire[1]), int(wire[2]))
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.output_size = int(output_size or default_output_size(*self.input_hw))
        self.width, self.lr, self.ssim_weight, self.steps = width, lr, ssim_weight, steps
        self.device = torch.device(device)
        # inputs -> [0, 1]: x * std + mean (the recorded normalisation or the images' range)
        self.mean = (mean if mean is not None else torch.zeros(1)).reshape(1, -1, 1, 1).float().to(device)
        self.std = (std if std is not None else torch.ones(1)).reshape(1, -1, 1, 1).float().to(device)
        with torch.random.fork_rng(devices=[]):  # the same decoder for the same seed, whatever ran before
            torch.manual_seed(seed + dist_info()[0])
            self.decoder = _SquareDecoder(
                self.wire[0], (self.wire[1], self.wire[2]), self.output_size, width
            ).to(device)
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self.mean_image = torch.zeros(1, 3, self.output_size, self.output_size, device=self.device)
        self.seen = 0

    @classmethod
    def for_protected(cls, p: Protected, images: Tensor | None = None, **options: Any) -> OnlineAttacker:
        """An attacker sized for ``p``: its wire at the input size of ``images`` (a batch of model inputs,
        as ``fit`` gets them; default: the recorded input spec). Without a recorded normalisation the
        images' per-channel min/max map inputs to ``[0, 1]``. ``options``: see the class."""
        wire, spec = p.meta["wire_spec"], p.meta["input_spec"]
        if len(wire["shape"]) != 3 or int(wire["feature_axis"]) != 0:
            raise InputError(
                f"the online attacker decodes image wires (C, h, w) with channels first; this transform's "
                f"wire is {tuple(wire['shape'])} (feature axis {wire['feature_axis']}): use objective='mean'"
            )
        shape = [int(s) for s in spec["shape"]]
        if images is not None:
            if not isinstance(images, Tensor) or images.dim() != 4:
                raise InputError("for_protected: images must be a (N, C, H, W) batch of model inputs")
            shape = list(images.shape[1:])
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise InputError(
                f"the online attacker reconstructs images: inputs (N, 1 or 3, H, W), got {tuple(shape)}"
            )
        dev = next(p.noise.parameters()).device
        probe = (
            images[:1] if images is not None else torch.zeros(1, *shape, dtype=getattr(torch, spec["dtype"]))
        )
        with torch.no_grad():
            act = p.head.eval()(probe.to(dev))
        mean, std = _unit_map(spec.get("normalisation"), images)
        options.setdefault("device", dev)
        return cls(tuple(act.shape[1:]), (shape[1], shape[2]), mean=mean, std=std, **options)

    # -- the protocol fit calls ------------------------------------------------------------------
    def step(self, release: Tensor, x: Tensor) -> float:
        """``steps`` decoder updates on ``release`` (detached); returns its loss / the mean image's."""
        z, target = self._standardise(release.detach()), self._target(x)
        self._track_mean(target)
        self.decoder.train()
        attack = torch.zeros(())
        for _ in range(self.steps):
            attack = _loss(self.decoder(z), target, self.ssim_weight)
            self.opt.zero_grad(set_to_none=True)
            attack.backward()
            self.opt.step()
        return float(attack.detach() / self._floor(target))

    def privacy_term(self, release: Tensor, x: Tensor) -> Tensor:
        """``max(0, log(floor) - log(attack))``: 0 once the decoder does no better than the mean image.

        Its gradient reaches the release (noise, and the head with ``train_head``) only; the decoder runs
        in eval mode (batch norm's running statistics) and is not moved by it.
        """
        target = self._target(x)
        self.decoder.eval().requires_grad_(False)
        try:
            attack = _loss(self.decoder(self._standardise(release)), target, self.ssim_weight)
        finally:
            self.decoder.requires_grad_(True)
        return (torch.log(self._floor(target)) - torch.log(attack)).clamp_min(0.0)

    def reconstruct(self, release: Tensor) -> Tensor:
        """The decoder's images in ``[0, 1]`` for released tensors (what this attacker sees)."""
        self.decoder.eval()
        with torch.no_grad():
            out: Tensor = self.decoder(self._standardise(release.to(self.device)))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder.state_dict(),
            "optimizer": self.opt.state_dict(),
            "mean_image": self.mean_image.cpu(),
            "seen": self.seen,
            "sizing": [*self.wire, *self.input_hw, self.output_size, self.width],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        have = [*self.wire, *self.input_hw, self.output_size, self.width]
        if [int(v) for v in state.get("sizing", have)] != have:
            raise InputError(
                f"the checkpoint's online attacker was sized {state['sizing']} (C, h, w, H, W, out, width), "
                f"this one {have}: build it the same way or delete the checkpoint to restart"
            )
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["optimizer"])
        self.mean_image = state["mean_image"].to(self.device)
        self.seen = int(state["seen"])

    # -- internals -------------------------------------------------------------------------------
    def _standardise(self, release: Tensor) -> Tensor:
        if release.dim() != 4 or release.shape[1] != self.wire[0]:
            raise InputError(
                f"the online attacker expects releases (B, {self.wire[0]}, h, w), got {tuple(release.shape)}"
            )
        stats = release.detach().float()
        mean = stats.mean((0, 2, 3), keepdim=True)
        std = stats.std((0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
        z = (release.float() - mean) / std
        if tuple(z.shape[-2:]) != self.wire[1:]:  # another input size (a per-channel transform fits any)
            z = F.interpolate(z, size=self.wire[1:], mode="bilinear", align_corners=False)
        return z

    def _target(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError(
                f"the online attacker reconstructs images (B, 1 or 3, H, W), got {tuple(x.shape)}"
            )
        img = (x.detach().float().to(self.device) * self.std + self.mean).clamp(0.0, 1.0)
        img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
        size = (self.output_size, self.output_size)
        return F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _track_mean(self, target: Tensor) -> None:
        """The running mean image of every target seen (the no-information baseline)."""
        n = target.shape[0]
        self.seen = min(self.seen + n, 100_000)
        self.mean_image += (target.mean(0, keepdim=True) - self.mean_image) * (n / self.seen)

    def _floor(self, target: Tensor) -> Tensor:
        return _loss(self.mean_image.expand_as(target), target, self.ssim_weight).detach().clamp_min(1e-6)


def _unit_map(normalisation: Any, images: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(mean, std) with ``x * std + mean`` in [0, 1]: the recorded normalisation, else the images' range."""
    if isinstance(normalisation, dict) and normalisation.get("mean") is not None:
        mean = torch.tensor(normalisation["mean"], dtype=torch.float32).flatten()
        std = torch.tensor(normalisation.get("std") or 1.0, dtype=torch.float32).flatten()
        scale = 255.0 if float(mean.abs().max()) > 1.0 else 1.0  # statistics in the 0-255 scale
        return mean / scale, std / scale
    if isinstance(normalisation, dict) and normalisation.get("std") is not None:  # (x / std): no mean
        return None, torch.tensor(normalisation["std"], dtype=torch.float32).flatten()
    if images is None:
        return None, None
    lo = images.detach().float().amin((0, 2, 3))
    hi = images.detach().float().amax((0, 2, 3))
    return lo, (hi - lo).clamp_min(1e-6)
