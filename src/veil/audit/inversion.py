"""White-box model inversion: the regularised maximum-likelihood attack (rMLE) and the hybrid.

He, Zhang & Lee, "Model inversion attacks against collaborative inference" (ACSAC 2019) reconstruct
the input of a split network from the intermediate activation by optimising an image until the
known head maps it onto the observed features, with a total-variation prior ("rMLE"). Here the attack
runs inside the audit's threat model: the attacker knows the head, mu, sigma and the suppression mask,
never a request's noise. For a release r (or the mean of K releases) the Gaussian negative
log-likelihood over the kept elements, normalised by their count, plus the prior is minimised:

    L(x) = 0.5 * sum_kept ((r - mu - h(x)) / (sigma / sqrt(K)))^2 / n_kept + tv_weight * TV(x)
           [+ anchor_weight * mean (x - x_prior)^2]

Suppressed elements carry nothing and are skipped. On a clean activation (no noise) the squared error
is divided by the activation's per-channel variance instead. The image x lives at ``param_size``^2
behind a sigmoid (so it stays in [0, 1]) and reaches the head through the differentiable input map
(:func:`veil.audit.whitebox.input_map`: the same resize and normalisation as the audit's images). Adam
with a cosine-decayed learning rate runs a fixed, recorded budget (:class:`InversionConfig`), batched
over images; each image keeps the iterate with its lowest objective (a quantity the attacker can see).

rMLE starts from the mean auxiliary image. The **hybrid** starts from the learned decoder's
reconstruction and adds a prior term pulling towards it (``anchor_weight``): the decoder supplies what
the head discards (its null space) and the likelihood sharpens what the head keeps. How much to trust
each depends on the head: an early, nearly invertible split wants a weak anchor (the likelihood alone
recovers the image), a deep, lossy one a strong anchor (matching its few features with an image drifts
into adversarial patterns that lower SSIM). The attacker can measure this on its own held-out auxiliary
images, so :func:`veil.audit.whitebox.whitebox_measure` picks the weight from ``anchor_grid`` (inf: the
decoder's output unchanged) by SSIM on them; the audit reports all three on the same releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.attack import NoiseSpec
from veil.audit.fisher import release_precision
from veil.errors import InputError


@dataclass
class InversionConfig:
    """The fixed, recorded budget of the white-box attacks (rMLE and the hybrid)."""

    steps: int = 200  # Adam steps of rMLE per image batch
    lr: float = 0.05  # on the sigmoid's logits; cosine decay to 10 %
    tv_weight: float = 0.05  # anisotropic total variation (mean |dx| + |dy| per pixel)
    param_size: int = 128  # the optimised image is param_size x param_size
    images: int = 16  # evaluation images attacked (the first ones)
    batch: int = 8  # images optimised together
    anchor_weight: float = 10.0  # hybrid: pull towards the decoder's reconstruction (mean squared)
    hybrid_steps: int = 200  # the hybrid's own budget (it starts from a better image)
    hybrid_lr: float = 0.05
    # the hybrid picks its anchor weight from this grid on held-out auxiliary images (inf: the decoder's
    # output unchanged) when the audit gives it some (whitebox_measure's ``calibration``)
    anchor_grid: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, math.inf)
    calibration_images: int = 4
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        """Refuse a bad budget in one line."""
        bad = [
            f"{name}={getattr(self, name)}"
            for name in ("steps", "param_size", "images", "batch", "hybrid_steps", "calibration_images")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        bad += [
            f"{name}={getattr(self, name)}"
            for name in ("lr", "hybrid_lr")
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0)
        ]
        bad += [
            f"{name}={getattr(self, name)}"
            for name in ("tv_weight", "anchor_weight")
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0)
        ]
        if not self.anchor_grid or any(not (w >= 0) for w in self.anchor_grid):
            bad.append(f"anchor_grid={self.anchor_grid} (needs weights >= 0; inf keeps the decoder's)")
        if self.param_size < 16 and "param_size" not in " ".join(bad):
            bad.append(f"param_size={self.param_size} (SSIM needs 16 or more)")
        if bad:
            raise InputError(
                f"white-box attack budget: {', '.join(bad)}; steps, sizes and counts must be integers "
                ">= 1 (param_size >= 16), learning rates > 0, tv_weight and anchor_weight >= 0"
            )


def total_variation(x: Tensor) -> Tensor:
    """Per-image anisotropic TV of [N, C, H, W]: mean |horizontal| + mean |vertical| differences."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def _logit(x: Tensor) -> Tensor:
    x = x.clamp(1e-3, 1 - 1e-3)
    return torch.log(x) - torch.log1p(-x)


def clean_scale(acts: Tensor) -> Tensor:
    """Per-channel 1 / variance of clean activations [N, C, h, w] (dead channels get the mean's)."""
    var = acts.float().transpose(0, 1).flatten(1).var(1, unbiased=False)
    floor = float(var.mean()) * 1e-3 + 1e-12
    return (1.0 / var.clamp_min(floor)).view(1, -1, 1, 1)


def invert(
    head: nn.Module,
    to_input: Callable[[Tensor], Tensor],
    released: Tensor,
    spec: NoiseSpec | None,
    k: int = 1,
    init: Tensor | None = None,
    cfg: InversionConfig | None = None,
    progress: bool = True,
    desc: str = "",
    prior: Tensor | None = None,
) -> Tensor:
    """Images [N, 3, out, out] in [0, 1] (CPU) whose head activations best explain ``released``.

    ``released`` [N, C, h, w]: one release per image (the mean of ``k`` releases), or clean activations
    when ``spec`` is None. ``init`` [N or 1, 3, s, s] in [0, 1] (default mid-grey): where the search
    starts; out = its size (else ``param_size``). ``prior`` (same shape rules): the image the hybrid's
    anchor term pulls towards, weighted by ``cfg.anchor_weight``.
    """
    cfg = cfg or InversionConfig()
    cfg.check()
    if released.dim() != 4 or released.shape[0] == 0:
        raise InputError(f"invert needs released tensors [N, C, h, w], got {tuple(released.shape)}")
    if k < 1:
        raise InputError(f"invert: k is the number of averaged releases (>= 1), got {k}")
    n, dev = released.shape[0], torch.device(cfg.device)
    out_size = cfg.param_size if init is None else int(init.shape[-1])
    start = torch.full((1, 3, cfg.param_size, cfg.param_size), 0.5) if init is None else init
    if start.dim() == 3:
        start = start.unsqueeze(0)
    start = _resize(start.float().cpu(), cfg.param_size).expand(n, -1, -1, -1)
    anchor = None
    if prior is not None:
        p = prior.unsqueeze(0) if prior.dim() == 3 else prior
        anchor = _resize(p.float().cpu(), cfg.param_size).expand(n, -1, -1, -1)
    head = head.to(dev).eval()
    spec_d = None if spec is None else spec.to(dev)
    scale = clean_scale(released).to(dev) if spec is None else None
    results = []
    for b0 in range(0, n, cfg.batch):
        r = released[b0 : b0 + cfg.batch].to(dev).float()
        z = _logit(start[b0 : b0 + cfg.batch]).to(dev).clone().requires_grad_(True)
        a = None if anchor is None else anchor[b0 : b0 + cfg.batch].to(dev)
        target, weight, count = r, scale, None
        if spec_d is not None:
            target = r - spec_d.mu
            keep = spec_d.keep.expand_as(r)
            count = keep.flatten(1).sum(1).clamp_min(1).float()
        opt = torch.optim.Adam([z], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
        )
        best = torch.full((r.shape[0],), math.inf, device=dev)
        best_x = torch.sigmoid(z.detach())
        bar = tqdm(range(cfg.steps + 1), desc=desc or "invert", disable=not progress, leave=False)
        for step in bar:
            x = torch.sigmoid(z)
            act = head(to_input(x))
            if spec_d is None:
                assert weight is not None
                data = 0.5 * ((act - target).pow(2) * weight).flatten(1).mean(1)
            else:
                if weight is None or spec_d.conditional is not None:
                    weight = release_precision(spec_d, act.detach(), k)
                assert count is not None
                data = 0.5 * ((act - target).pow(2) * weight).flatten(1).sum(1) / count
            loss = data + cfg.tv_weight * total_variation(x)
            if a is not None:
                loss = loss + cfg.anchor_weight * (x - a).pow(2).flatten(1).mean(1)
            with torch.no_grad():  # keep each image's best iterate so far (x before this step)
                better = loss.detach() < best
                best = torch.where(better, loss.detach(), best)
                best_x[better] = x.detach()[better]
            if step == cfg.steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), z)
            z.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach().mean()):.4f}")
        results.append(_resize(best_x, out_size).clamp(0, 1).cpu())
    return torch.cat(results)


def hybrid(
    head: nn.Module,
    to_input: Callable[[Tensor], Tensor],
    released: Tensor,
    spec: NoiseSpec | None,
    decoded: Tensor,
    k: int = 1,
    cfg: InversionConfig | None = None,
    progress: bool = True,
    desc: str = "hybrid",
    anchor_weight: float | None = None,
) -> Tensor:
    """The hybrid: rMLE started from the decoder's reconstructions ``decoded`` and anchored to them
    (``hybrid_steps`` at ``hybrid_lr``, ``anchor_weight``, default ``cfg.anchor_weight``; inf returns
    ``decoded`` itself)."""
    cfg = cfg or InversionConfig()
    cfg.check()
    weight = cfg.anchor_weight if anchor_weight is None else anchor_weight
    if math.isinf(weight):
        return decoded.float().clamp(0, 1).cpu()
    own = replace(cfg, steps=cfg.hybrid_steps, lr=cfg.hybrid_lr, anchor_weight=weight)
    return invert(head, to_input, released, spec, k, decoded, own, progress, desc, prior=decoded)
