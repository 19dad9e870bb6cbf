"""An attacker trained *during* transform training, so the noise learns what to hide.

``-log mean sigma`` rewards noise wherever the detector does not need it, which is not the same as
where an attacker finds the face: the detector's most useful channels stay nearly clean and a
decoder recovers a coarse face from them. With ``privacy="adversarial"`` a small decoder (the audit's
``veil-decoder/1`` recipe, thinner) learns online to reconstruct photos from released tensors (fresh
noise every step, as the audit's attacker does), and the transform is also rewarded for raising that
decoder's loss up to what the mean image scores (no information): the min-max game steers sigma to
the channels that leak the face. Per-channel transforms only (the photos are audited at their own
input size, where a per-element transform does not fit). When training also fine-tunes the head's last
block (``train_head``), that block is the attacker's ``encoder``: the cached activations are its inputs
and the term's gradient reaches it too, so the block learns features the decoder cannot invert.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from veil.audit.attack import _loss, head_activations, resize_uint8
from veil.audit.decoder import Decoder
from veil.audit.metrics import to_unit
from veil.errors import InputError
from veil.imageio import list_images, load_image
from veil.noise import NoiseTransform


class OnlineAttacker:
    """A decoder that chases the transform: one update per training step on fresh noise."""

    def __init__(
        self,
        activations: Tensor,
        targets: Tensor,
        width: int = 64,
        lr: float = 2e-3,
        batch_size: int = 16,
        ssim_weight: float = 0.5,
        seed: int = 0,
        encoder: nn.Module | None = None,
        steps: int = 1,
    ) -> None:
        if activations.shape[0] != targets.shape[0] or activations.shape[0] < 2:
            raise InputError("the online attacker needs at least two photos with activations and targets")
        self.device = activations.device  # the decoder trains where the activations are
        self.activations, self.targets, self.encoder = activations, to_unit(targets).to(self.device), encoder
        released = self._encode(activations[:2]).detach()
        self.decoder_shape = (released.shape[1], released.shape[-1], targets.shape[-1], width)
        self.lr = lr
        self.reset(seed)
        self.clean_mean = activations.mean((0, 2, 3), keepdim=True)
        self.clean_var = activations.var((0, 2, 3), keepdim=True)
        self.batch_size, self.ssim_weight, self.steps = batch_size, ssim_weight, steps
        self.gen = torch.Generator().manual_seed(seed)
        # noise is drawn where the decoder trains: on a GPU no per-step host draw and copy
        on_cpu = self.device.type == "cpu"
        self.noise_gen = self.gen if on_cpu else torch.Generator(device=self.device).manual_seed(seed + 1)
        self.mean_image = self.targets.mean(0, keepdim=True)

    def reset(self, seed: int) -> None:
        """Start a fresh decoder (and optimiser): the audit's attacker learns from scratch too.

        A decoder that has chased the transform for a whole run can sit in a blind spot the transform
        learned to exploit; restarting it now and then makes the transform beat fresh learners.
        """
        with torch.random.fork_rng():  # the same decoder for the same seed, whatever ran before
            torch.manual_seed(seed)
            self.decoder = Decoder(*self.decoder_shape).to(self.device)
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=self.lr)

    def privacy_term(self, noise: NoiseTransform) -> tuple[Tensor, float]:
        """Update the decoder ``steps`` times, then return the term ``log(floor) - log(attack)``.

        The term is >= 0 and reaches 0 once the decoder does no better than the mean image; its
        gradient flows into mu and sigma only (the decoder is not moved by it). Also returns the
        decoder's loss relative to the floor (1 = no information), for the training log.
        """
        for _ in range(self.steps - 1):  # extra decoder updates: the chaser keeps up with the transform
            clean, target = self._batch()
            with torch.no_grad():
                released = self._standardise(noise, _release(noise, self._encode(clean), self.noise_gen))
            self._update(released, target)
        clean, target = self._batch()
        released = self._standardise(noise, _release(noise, self._encode(clean), self.noise_gen))
        self._update(released.detach(), target)
        self.decoder.requires_grad_(False)
        try:
            self.decoder.eval()  # BatchNorm: use running statistics, do not update them twice
            attack = _loss(self.decoder(released), target, self.ssim_weight)
        finally:
            self.decoder.requires_grad_(True)
        floor = _loss(self.mean_image.expand_as(target), target, self.ssim_weight).detach()
        term = (torch.log(floor) - torch.log(attack)).clamp_min(0.0)
        return term, float(attack.detach() / floor)

    def _batch(self) -> tuple[Tensor, Tensor]:
        n = self.activations.shape[0]
        idx = torch.randint(0, n, (min(self.batch_size, n),), generator=self.gen).to(self.device)
        return self.activations[idx], self.targets[idx]

    def _encode(self, clean: Tensor) -> Tensor:
        return clean if self.encoder is None else self.encoder(clean)

    def _update(self, released: Tensor, target: Tensor) -> None:
        self.decoder.train()
        attack = _loss(self.decoder(released), target, self.ssim_weight)
        self.opt.zero_grad(set_to_none=True)
        attack.backward()
        self.opt.step()

    def _standardise(self, noise: NoiseTransform, released: Tensor) -> Tensor:
        """What the attacker feeds its decoder: mu removed, each channel scaled to unit variance.

        The attacker knows mu and sigma, so neither a shifted mu nor a rescaled channel may count as
        privacy: without this the transform wins the game by moving the decoder's inputs off the
        distribution it was trained on, which a real attacker simply undoes.
        """
        centred = released - noise.mu
        if self.encoder is not None or noise.conditional:  # moving block or per-image sigma: batch stats
            stats = centred.detach()
            return (centred - stats.mean((0, 2, 3), keepdim=True)) / stats.std(
                (0, 2, 3), keepdim=True
            ).clamp_min(1e-6)
        scale = (self.clean_var + noise.sigma().detach() ** 2).sqrt().clamp_min(1e-6)
        return (centred - self.clean_mean) / scale

    def state_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder.state_dict(),
            "optimizer": self.opt.state_dict(),
            "photos": self.activations.shape[0],
            "activation_size": self.activations.shape[-1],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("photos", self.activations.shape[0])) != self.activations.shape[0]:
            raise InputError(
                "checkpoint's online attacker learned from another photo set: delete it to restart"
            )
        if int(state.get("activation_size", self.activations.shape[-1])) != self.activations.shape[-1]:
            raise InputError(
                "checkpoint's online attacker attacked another input size (--adversary-size): "
                "delete it to restart"
            )
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["optimizer"])


def _release(noise: NoiseTransform, clean: Tensor, gen: torch.Generator) -> Tensor:
    """``noise`` applied to activations of another spatial size (a per-channel transform fits any)."""
    eps = torch.randn(clean.shape, generator=gen, dtype=clean.dtype, device=clean.device)
    out = clean + noise.mu + noise.sigma(clean) * eps
    return torch.where(noise.keep, out, noise.mu.expand_as(out))


def adversary_photos(
    photo_dirs: Sequence[str | Path], scene_dirs: Sequence[str | Path], count: int, seed: int
) -> list[Tensor]:
    """The photos the online attacker learns from: the training photos (or scenes if there are none)."""
    files = [p for d in photo_dirs for p in list_images(d)] or [p for d in scene_dirs for p in list_images(d)]
    if not files:
        raise InputError("--privacy adversarial needs training photos (--images) or scenes to attack")
    rng = random.Random(seed + 7)
    rng.shuffle(files)
    return [load_image(p) for p in files[:count]]


def build_online_attacker(
    head: nn.Module,
    photos: Sequence[Tensor],
    input_size: int,
    output_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    encoder: nn.Module | None = None,
    steps: int = 1,
) -> OnlineAttacker:
    """Cache the head's clean activations of ``photos`` at ``input_size`` and their small targets.

    With ``encoder`` (a trainable block after ``head``), releases are ``noise(encoder(activation))``.
    """
    device = next(head.parameters()).device
    acts = head_activations(
        head, photos, input_size, desc="caching attacker photos", progress=progress, device=device
    ).to(device)
    targets = torch.stack([resize_uint8(p, output_size) for p in photos])
    return OnlineAttacker(acts, targets, seed=seed, encoder=encoder, steps=steps)
