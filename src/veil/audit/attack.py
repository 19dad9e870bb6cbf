"""The reconstruction attacker: a fixed decoder trained to turn released tensors back into images.

Threat model: the attacker knows the head's weights and the transform's distribution (mu, sigma, mask)
and has auxiliary images from the same domain, but never the noise of a particular request. It
therefore caches the clean head activations of its auxiliary images once and, at every training step,
adds a *fresh* draw from the transform's distribution: the decoder learns to see through the noise as
well as it can. The same recipe on clean activations is the baseline that proves the attack works.

Architecture and budget are fixed (``AttackConfig``, ``Decoder``) so numbers are comparable across
transforms and releases; the best checkpoint on a held-out slice of the auxiliary images is kept and
the validation curve is returned, so an undertrained attacker is visible rather than flattering.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.decoder import Decoder
from veil.audit.metrics import psnr, ssim, to_unit
from veil.errors import InputError
from veil.imageio import load_image, preprocess
from veil.noise import NoiseTransform


@dataclass
class AttackConfig:
    """The attacker's fixed recipe. Defaults reproduce the issue's calibration (128^2 out of 512^2)."""

    input_size: int = 512  # audit input size (per-channel transforms only; per-element use their own)
    output_size: int = 128  # reconstructions are compared with the image at this size
    width: int = 128  # decoder channels at the activation's resolution; halved per upsampling stage
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3  # Adam, linear warm-up then cosine decay to 5%
    ssim_weight: float = 0.5  # loss = L1 + ssim_weight * (1 - SSIM): the attacker optimises the metric
    adapt_steps: int = 300  # fine-tuning per K > 1 on noise of the K-draw average
    ks: tuple[int, ...] = (1, 4, 16)
    val_images: int = 96  # held-out auxiliary images (whole persons) for the curve and model selection
    eval_every: int = 50
    plateau_tol: float = 0.01  # "converged" when the last quarter improved val SSIM by less than this
    max_images: int | None = None  # cap on auxiliary images (tests)
    seed: int = 0
    device: str = "cpu"  # where the decoder trains and decodes ("cuda": minutes instead of an hour)


# -- the noise distribution, as the attacker knows it -----------------------------------------
@dataclass
class NoiseSpec:
    """mu, sigma and the keep mask of a transform, broadcastable to the audited activation."""

    mu: Tensor
    sigma: Tensor  # a conditional transform's per-channel part; its sigma comes from ``conditional``
    keep: Tensor
    conditional: NoiseTransform | None = None  # set for granularity "conditional": sigma(clean)

    @classmethod
    def of(cls, noise: NoiseTransform, shape: Sequence[int]) -> NoiseSpec:
        """The distribution for activations of ``shape`` (C, H, W); per-element transforms must match."""
        shape = tuple(int(s) for s in shape)
        if noise.granularity == "element" and tuple(noise.shape) != shape:
            raise InputError(
                f"per-element transform made for activations {tuple(noise.shape)} cannot be audited on "
                f"{shape}: use the transform's own input size (omit --size)"
            )
        if noise.shape[0] != shape[0]:
            raise InputError(f"transform has {noise.shape[0]} channels, the activation {shape[0]}")
        with torch.no_grad():
            conditional = copy.deepcopy(noise).eval().requires_grad_(False) if noise.conditional else None
            mu, sigma, keep = noise.mu.detach().clone(), noise.sigma().detach().clone(), noise.keep.clone()
            return cls(mu, sigma, keep, conditional)

    def to(self, device: torch.device | str) -> NoiseSpec:
        """The same distribution on ``device`` (draws there need a generator on that device)."""
        cond = None if self.conditional is None else copy.deepcopy(self.conditional).to(device)
        return NoiseSpec(self.mu.to(device), self.sigma.to(device), self.keep.to(device), cond)

    def draw(self, clean: Tensor, gen: torch.Generator, k: int = 1) -> Tensor:
        """What the receiver sees: one release, or the mean of ``k`` independent releases.

        The mean of k draws of ``x + mu + sigma * eps`` is exactly ``x + mu + sigma / sqrt(k) * eps``
        (suppressed elements stay at mu), so averaging costs one draw.
        """
        eps = torch.randn(clean.shape, generator=gen, dtype=clean.dtype, device=clean.device)
        sigma = self.sigma
        if self.conditional is not None:  # the attacker knows the network, the sender ran it on clean
            with torch.no_grad():
                sigma = self.conditional.sigma(clean)
        out = clean + self.mu + (sigma / math.sqrt(k)) * eps
        return torch.where(self.keep, out, self.mu.expand_as(out))


# -- data ----------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """Images of one folder, ready for the audit: head inputs are computed on demand per size."""

    name: str
    paths: list[Path]
    images: list[Tensor]  # uint8 [3, H, W] as decoded
    targets: Tensor  # uint8 [N, 3, out, out]: what the attacker tries to recover

    @classmethod
    def load(cls, paths: Sequence[Path], output_size: int, name: str = "") -> ImageSet:
        images = [load_image(p) for p in paths]
        targets = torch.stack([resize_uint8(img, output_size) for img in images])
        return cls(name, list(paths), images, targets)


def resize_uint8(img: Tensor, size: int) -> Tensor:
    """Anti-aliased square resize of a uint8 [3, H, W] image (the reference the attack is scored on)."""
    x = F.interpolate(img.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


@torch.no_grad()
def head_activations(
    head: nn.Module,
    images: Sequence[Tensor],
    size: int,
    batch: int = 16,
    desc: str = "",
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Clean activations [N, C, h, w] (on the CPU) of square ``size`` inputs; cached once, the head is fixed.

    ``device`` runs the head there (moving ``head`` to it).
    """
    head.to(device)
    out = []
    for start in tqdm(range(0, len(images), batch), desc=desc or f"head @ {size}", disable=not progress):
        x = preprocess(list(images[start : start + batch]), size=(size, size), device=device).tensor
        out.append(head(x).contiguous().cpu())
    return torch.cat(out)


# -- the trained attacker --------------------------------------------------------------------------
@dataclass
class Attacker:
    """A trained decoder plus the distribution it was trained against and its training record."""

    decoder: Decoder
    noise: NoiseSpec | None  # None: the clean baseline
    k: int = 1  # trained on the mean of k releases
    curve: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_ssim: float = float("nan")
    plateau_gain: float = float("nan")
    converged: bool = False

    def release(self, clean: Tensor, gen: torch.Generator, k: int | None = None) -> Tensor:
        """Simulate what the receiver sees for these clean activations (mean of k releases)."""
        return clean if self.noise is None else self.noise.draw(clean, gen, k or self.k)


def _loss(pred: Tensor, target: Tensor, ssim_weight: float) -> Tensor:
    loss = F.l1_loss(pred, target)
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, target).mean())
    return loss


def _person(path: Path) -> str:
    stem = path.stem
    head, _, tail = stem.rpartition("_")
    return head if tail.isdigit() and head else stem


def split_validation(paths: Sequence[Path], count: int) -> tuple[list[int], list[int]]:
    """(train, val) indices; val takes whole persons from the end so no face is in both."""
    n = len(paths)
    count = min(count, n // 5)
    if count <= 0:
        return list(range(n)), []
    cut = n - count
    while 0 < cut < n and _person(paths[cut]) == _person(paths[cut - 1]):
        cut += 1
    return list(range(cut)), list(range(cut, n))


@torch.no_grad()
def decode(decoder: Decoder, released: Tensor, batch: int = 64) -> Tensor:
    """Reconstructions in [0, 1], [N, 3, out, out], on the CPU (the decoder runs where it lives)."""
    decoder.eval()
    dev = next(decoder.parameters()).device
    parts = [decoder(released[i : i + batch].to(dev)).cpu() for i in range(0, released.shape[0], batch)]
    return torch.cat(parts)


@torch.no_grad()
def score(
    attacker: Attacker, clean: Tensor, targets: Tensor, k: int | None = None, seed: int = 12345
) -> tuple[Tensor, Tensor]:
    """Per-image (SSIM, PSNR) of the attacker's reconstructions from one (k-averaged) release each."""
    gen = torch.Generator().manual_seed(seed)
    recon = decode(attacker.decoder, attacker.release(clean, gen, k))
    ref = to_unit(targets)
    return ssim(recon, ref), psnr(recon, ref)


def _fit(
    attacker: Attacker,
    acts: Tensor,
    targets: Tensor,
    train_idx: list[int],
    val_idx: list[int],
    cfg: AttackConfig,
    steps: int,
    lr: float,
    desc: str,
    progress: bool,
) -> Attacker:
    """The training loop shared by the K = 1 attacker and its K > 1 adaptations."""
    dev = torch.device(cfg.device)
    decoder = attacker.decoder.to(dev)
    spec = None if attacker.noise is None else attacker.noise.to(dev)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    warm = max(1, min(50, steps // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)  # draws where the decoder is
    train_t = torch.tensor(train_idx)
    val_acts, val_targets = acts[val_idx], targets[val_idx]
    best_state, best, best_step, running, count = None, -math.inf, 0, 0.0, 0
    curve: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        decoder.train()
        idx = train_t[torch.randint(0, len(train_idx), (min(cfg.batch_size, len(train_idx)),), generator=gen)]
        clean = acts[idx].to(dev, non_blocking=True)
        x = clean if spec is None else spec.draw(clean, noise_gen, attacker.k)
        loss = _loss(decoder(x), to_unit(targets[idx].to(dev, non_blocking=True)), cfg.ssim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running, count = running + float(loss.detach()), count + 1
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            point = {"step": float(step + 1), "loss": running / count}
            running, count = 0.0, 0
            if val_idx:
                val = float(score(attacker, val_acts, val_targets, seed=cfg.seed + 7)[0].mean())
                point["val_ssim"] = val
                if val > best:
                    best, best_step = val, step + 1
                    best_state = copy.deepcopy(decoder.state_dict())
            curve.append(point)
            bar.set_postfix(
                loss=f"{point['loss']:.3f}", val_ssim=f"{point.get('val_ssim', float('nan')):.3f}"
            )
    if best_state is not None:
        decoder.load_state_dict(best_state)
    attacker.curve, attacker.best_step, attacker.best_val_ssim = curve, best_step, best
    vals = [(p["step"], p["val_ssim"]) for p in curve if "val_ssim" in p]
    last = steps - steps // 4
    before = [v for s, v in vals if s <= last]
    after = [v for s, v in vals if s > last]
    if before and after:  # best in the last quarter vs best before it
        attacker.plateau_gain = max(0.0, max(after) - max(before))
        attacker.converged = attacker.plateau_gain < cfg.plateau_tol
    decoder.eval()
    return attacker


def train_attacker(
    acts: Tensor,
    targets: Tensor,
    paths: Sequence[Path],
    noise: NoiseSpec | None,
    cfg: AttackConfig,
    desc: str = "attacker",
    progress: bool = True,
) -> Attacker:
    """Train the decoder on auxiliary activations ``acts`` -> ``targets`` with fresh noise every step."""
    torch.manual_seed(cfg.seed)
    decoder = Decoder(acts.shape[1], (acts.shape[2], acts.shape[3]), targets.shape[-1], cfg.width)
    attacker = Attacker(decoder, noise)
    sample = acts[: min(256, acts.shape[0])]
    decoder.set_input_stats(attacker.release(sample, torch.Generator().manual_seed(cfg.seed + 2)))
    train_idx, val_idx = split_validation(paths, cfg.val_images)
    return _fit(attacker, acts, targets, train_idx, val_idx, cfg, cfg.steps, cfg.lr, desc, progress)


def adapt_attacker(
    base: Attacker,
    k: int,
    acts: Tensor,
    targets: Tensor,
    paths: Sequence[Path],
    cfg: AttackConfig,
    progress: bool = True,
) -> Attacker:
    """Fine-tune a copy of the K = 1 attacker on the mean of ``k`` releases (the repeated-query attack)."""
    if base.noise is None:
        raise InputError("a clean attacker has nothing to adapt to: repeated queries change nothing")
    attacker = Attacker(copy.deepcopy(base.decoder), base.noise, k=k)
    train_idx, val_idx = split_validation(paths, cfg.val_images)
    return _fit(
        attacker,
        acts,
        targets,
        train_idx,
        val_idx,
        cfg,
        cfg.adapt_steps,
        cfg.lr * 0.3,
        f"adapt K={k}",
        progress,
    )


def reconstruct(activation: Tensor, attacker: Attacker) -> Tensor:
    """What an attacker recovers from a released tensor [N, C, h, w] (or [C, h, w]): uint8 RGB images.

    For notebooks: ``reconstruct(detector.noise(detector.head(x)), attacker)`` shows what leaves the
    machine as the receiver can see it.
    """
    x = activation.unsqueeze(0) if activation.dim() == 3 else activation
    c, (h, w) = attacker.decoder.in_channels, attacker.decoder.in_hw
    if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise InputError(f"attacker expects released tensors [N, {c}, {h}, {w}], got {tuple(x.shape)}")
    recon = decode(attacker.decoder, x.detach().float().cpu())
    return (recon * 255.0).round_().to(torch.uint8)
