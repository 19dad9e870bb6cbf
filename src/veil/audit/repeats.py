"""Repeated queries: what averaging K releases of one image buys the receiver, with fresh or sticky noise.

A receiver that gets the same image K times (a retried request, a still scene in a video, K = 64 about two
seconds at 30 fps) can average the K releases. With fresh noise (the default) the mean is exactly one draw
with sigma / sqrt(K) (:meth:`veil.audit.attack.NoiseSpec.draw`), so the reconstruction attack improves with
K; the audit adapts its decoder to each K (:func:`veil.audit.attack.adapt_attacker`). With opt-in sticky
noise (:mod:`veil.sticky`: the noise derived from a client-held key and the input's bytes) every repeat is
the same tensor and the mean is that tensor: the attack is flat in K by construction.

:func:`repeats_measure` measures both sides of that trade on one evaluation set:

* ``fresh``: SSIM/PSNR per K of the best of the K = 1 decoder and the K-adapted one on the mean of K
  releases, with the seeds :func:`veil.audit.measure.measure` uses (the audit's own K rows);
* ``sticky``: the same K, on the sticky release of each image (seeded from the key and the image's decoded
  uint8 pixels), scored by the best of *every* attacker given (a receiver of sticky repeats holds one
  release, so any decoder may be tried on it): the same value for every K;
* ``linkage`` (the cost): ROC AUC of telling "two releases of the same image" from "releases of two
  different images" by their negative L2 distance, with fresh noise (two independent draws) and with
  sticky noise (two identical tensors: AUC 1.0, repeats are linkable). Fresh releases may be linkable too
  when the noise is small against how much two images' activations differ: it is measured, not assumed;
* ``noise_corr``: Pearson correlation of the standardised sticky noise ((release - x - mu) / sigma, kept
  elements) between two different images: about 0 (|r| of order 1/sqrt(elements)), so different images
  stay unrelated.

The key defaults to one derived from ``seed``: it stands for the client's secret, which the receiver never
knows and the attack never uses (any key gives releases with the same distribution).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from veil.audit.attack import Attacker, ImageSet, NoiseSpec, decode
from veil.audit.metrics import psnr, roc_auc, ssim, to_unit
from veil.errors import InputError
from veil.sticky import check_key, sticky_eps, sticky_seeds

DEFAULT_KS = (1, 4, 16, 64)


def sticky_draw(spec: NoiseSpec, clean: Tensor, seeds: Sequence[int], k: int = 1) -> Tensor:
    """What the receiver can average from ``k`` repeats under sticky noise: every repeat is the same tensor.

    Sample i gets the noise of ``seeds[i]`` (:func:`veil.sticky.sticky_eps`), computed as the client's
    :class:`~veil.noise.NoiseTransform` does (``mu + sigma * eps + x``, suppressed elements at mu), so the
    mean of ``k`` repeats is that one release for any ``k``.
    """
    if k < 1:
        raise InputError(f"k counts repeats and must be >= 1, got {k}")
    if len(seeds) != clean.shape[0]:
        raise InputError(f"{len(seeds)} sticky seeds for {clean.shape[0]} activations: one per sample")
    eps = sticky_eps(clean.shape[1:], seeds, clean.dtype, clean.device)
    sigma = spec.sigma
    if spec.conditional is not None:
        with torch.no_grad():
            sigma = spec.conditional.sigma(clean)
    out = torch.addcmul(spec.mu, eps, sigma).add_(clean)
    return torch.where(spec.keep, out, spec.mu.expand_as(out))


def image_seeds(key: bytes, images: ImageSet) -> list[int]:
    """One sticky seed per image: the key's HMAC of the image's decoded uint8 pixels."""
    return [sticky_seeds(key, img.unsqueeze(0))[0] for img in images.images]


def audit_key(seed: int) -> bytes:
    """A stand-in for the client's secret key, fixed by ``seed`` so the measurement is reproducible."""
    return hashlib.sha256(b"veil-audit-sticky-key\x00" + str(int(seed)).encode()).digest()


def _pairs(n: int, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` ordered pairs (i, j), i != j, drawn without bias (all of them when there are fewer)."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    off = i != j
    i, j = i[off], j[off]
    if i.numel() > count:
        pick = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(seed))[:count]
        i, j = i[pick], j[pick]
    return i, j


def _linkage(first: Tensor, second: Tensor, neg_i: Tensor, neg_j: Tensor) -> float:
    """AUC of -L2(first[i], second[i]) (same image) against -L2(first[i], second[j]) (two images)."""
    a, b = first.flatten(1).double(), second.flatten(1).double()
    same = -(a - b).norm(dim=1)
    other = -(a[neg_i] - b[neg_j]).norm(dim=1)
    labels = torch.cat([torch.ones_like(same), torch.zeros_like(other)])
    return roc_auc(torch.cat([same, other]), labels)


def _noise_corr(spec: NoiseSpec, clean: Tensor, rel: Tensor, neg_i: Tensor, neg_j: Tensor) -> dict[str, Any]:
    """Pearson r of the standardised noise of two different images (kept elements, sigma > 0)."""
    sigma = spec.sigma if spec.conditional is None else spec.conditional.sigma(clean)
    sigma = sigma.expand_as(clean)
    use = spec.keep.expand_as(clean[0]) & (sigma > 0).all(0)  # elements with noise in every sample
    eps = ((rel - clean - spec.mu) / sigma.clamp_min(1e-12))[:, use].double()
    if eps.shape[1] < 2:
        return {"mean_abs": float("nan"), "max_abs": float("nan"), "pairs": 0, "elements": int(eps.shape[1])}
    eps = eps - eps.mean(1, keepdim=True)
    eps = eps / eps.norm(dim=1, keepdim=True).clamp_min(1e-300)
    r = (eps[neg_i] * eps[neg_j]).sum(1).abs()
    return {
        "mean_abs": float(r.mean()),
        "max_abs": float(r.max()),
        "pairs": int(r.numel()),
        "elements": int(eps.shape[1]),
        "chance_mean_abs": math.sqrt(2.0 / (math.pi * eps.shape[1])),  # E|r| of independent noise
    }


def _best(attackers: Sequence[Attacker], released: Tensor, ref: Tensor) -> tuple[float, float]:
    """(mean SSIM, mean PSNR) of the attacker with the best mean SSIM on ``released``."""
    best: tuple[float, float] | None = None
    for attacker in attackers:
        recon = decode(attacker.decoder, released)
        mean_ssim, mean_psnr = float(ssim(recon, ref).mean()), float(psnr(recon, ref).mean())
        if best is None or mean_ssim > best[0]:
            best = (mean_ssim, mean_psnr)
    assert best is not None
    return best


@torch.no_grad()
def repeats_measure(
    attackers: dict[int, list[Attacker]],
    acts: Tensor,
    images: ImageSet,
    spec: NoiseSpec | None,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    key: bytes | None = None,
    pairs: int = 2000,
) -> dict[str, Any]:
    """Fresh vs sticky noise under K repeated queries, and what sticky noise costs (see the module).

    ``attackers``: K -> attackers as the audit builds them (``{1: [base], 4: [adapted], ...}``; K = 1 is
    needed); ``acts``: the clean activations of ``images``; ``spec``: the transform's noise (None, a clean
    target: every release is the same tensor either way). ``seed`` is the audit's (``cfg.seed``): the fresh
    rows then use the draws :func:`veil.audit.measure.measure` uses. ``pairs``: different-image pairs for
    the linkage AUC and the noise correlation.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"ks are repeat counts >= 1, got {list(ks)}")
    if 1 not in attackers or not attackers[1]:
        raise InputError("repeats_measure needs the K = 1 attacker (attackers[1])")
    n = acts.shape[0]
    if n != len(images.images) or n < 2:
        raise InputError(
            f"{n} activations for {len(images.images)} images: need one per image and at least 2 images"
        )
    key = check_key(audit_key(seed) if key is None else key)
    ref = to_unit(images.targets)
    fresh: dict[str, dict[str, float]] = {"ssim": {}, "psnr": {}}
    for k in ks:  # the draws measure() scores: NoiseSpec.draw with seed + 101 k
        rel = acts if spec is None else spec.draw(acts, torch.Generator().manual_seed(seed + 101 * k), k)
        mine = attackers.get(k, []) + (attackers[1] if k != 1 else [])
        fresh["ssim"][str(k)], fresh["psnr"][str(k)] = _best(mine, rel, ref)
    sticky_rel = acts if spec is None else sticky_draw(spec, acts, image_seeds(key, images))
    best = _best([a for k in sorted(attackers) for a in attackers[k]], sticky_rel, ref)
    sticky = {"ssim": {str(k): best[0] for k in ks}, "psnr": {str(k): best[1] for k in ks}}
    neg_i, neg_j = _pairs(n, pairs, seed + 3)
    if spec is None:
        fresh_auc, corr = 1.0, None  # clean releases repeat exactly too
    else:
        gen = torch.Generator().manual_seed(seed + 17)
        fresh_auc = _linkage(spec.draw(acts, gen), spec.draw(acts, gen), neg_i, neg_j)
        corr = _noise_corr(spec, acts, sticky_rel, neg_i, neg_j)
    return {
        "ks": ks,
        "fresh": fresh,
        "sticky": sticky,
        "linkage": {
            "fresh_auc": fresh_auc,
            "sticky_auc": _linkage(sticky_rel, sticky_rel, neg_i, neg_j),
            "pairs": int(neg_i.numel()),
            "same_pairs": n,
        },
        "noise_corr": corr,
        "images": n,
    }


__all__ = ["DEFAULT_KS", "audit_key", "image_seeds", "repeats_measure", "sticky_draw"]
