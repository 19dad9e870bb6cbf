"""What the audit measures: image similarity (SSIM, PSNR), dependence (distance correlation), ROC AUC.

Everything is plain torch so the audit adds no dependency. SSIM is the standard one (Wang et al., 2004):
an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed per colour channel over the
"valid" region and averaged — the same definition as ``pytorch-msssim`` and ``skimage`` with
``gaussian_weights=True``, so numbers are comparable with the literature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from veil.errors import InputError

GOAL_CLEAN_SSIM = 0.65  # the audit's attacker must be at least this strong on clean RDCL activations
GOAL_MARGIN = 0.03  # "no information beyond the average face": attacker SSIM <= floor + this


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter applied to every channel independently."""
    c = x.shape[1]
    k = window.numel()
    x = F.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of two batches [N, C, H, W] (values in [0, data_range]); returns [N].

    Differentiable, so the attacker can also train on it (the strongest attacker for this metric).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(
            f"ssim needs two [N, C, H, W] batches of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < window:
        raise InputError(
            f"images of {tuple(x.shape[-2:])} are smaller than the {window}x{window} SSIM window"
        )
    x, y = x.float(), y.float()
    w = _gaussian_window(window, sigma, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x, w), _blur(y, w)
    sxx = _blur(x * x, w) - mu_x**2
    syy = _blur(y * y, w) - mu_y**2
    sxy = _blur(x * y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB of two batches [N, C, H, W]; returns [N] (capped at 100 dB for equal images)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-10))


def _u_centered(d: Tensor) -> Tensor:
    """U-centring of a distance matrix (Szekely & Rizzo 2014): makes dCor^2 unbiased."""
    n = d.shape[0]
    row = d.sum(1, keepdim=True) / (n - 2)
    col = d.sum(0, keepdim=True) / (n - 2)
    total = d.sum() / ((n - 1) * (n - 2))
    out = d - row - col + total
    out.fill_diagonal_(0.0)
    return out


def distance_correlation(x: Tensor, y: Tensor) -> float:
    """Bias-corrected distance correlation between paired samples x [n, ...] and y [n, ...].

    0 means independence (in expectation: the plain estimator is biased upwards for high-dimensional
    samples, this one is not), 1 means one is a similarity transform of the other. Negative estimates
    (independence plus sampling noise) are reported as 0.
    """
    n = x.shape[0]
    if n != y.shape[0] or n < 4:
        raise InputError(f"distance correlation needs >= 4 paired samples, got {n} and {y.shape[0]}")
    a = _u_centered(torch.cdist(x.flatten(1).double(), x.flatten(1).double()))
    b = _u_centered(torch.cdist(y.flatten(1).double(), y.flatten(1).double()))
    scale = 1.0 / (n * (n - 3))
    dcov_xy = (a * b).sum() * scale
    dcov_xx = (a * a).sum() * scale
    dcov_yy = (b * b).sum() * scale
    denom = math.sqrt(max(float(dcov_xx * dcov_yy), 0.0))
    if denom <= 0.0:
        return 0.0
    r2 = float(dcov_xy) / denom
    return math.sqrt(r2) if r2 > 0 else 0.0


def batched_dcor(x: Tensor, y: Tensor, batch: int = 128, seed: int = 0) -> float:
    """Mean distance correlation over shuffled batches (the n x n distance matrices stay small).

    NaN below 32 samples: the estimate is then too noisy to mean anything.
    """
    n = x.shape[0]
    if n < 32:
        return float("nan")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    values = []
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        if idx.numel() >= min(32, batch) or start == 0:
            values.append(distance_correlation(x[idx], y[idx]))
    return float(sum(values) / len(values))


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); 0.5 = chance."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if bool((counts > 1).any()):
        cum = torch.cumsum(counts, 0).double()
        avg = cum - (counts.double() - 1) / 2.0
        ranks[order] = avg[inverse]
    u = float(ranks[labels].sum()) - pos * (pos + 1) / 2.0
    return u / (pos * neg)


def to_unit(images: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] -> float in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
