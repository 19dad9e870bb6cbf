"""The Fisher-information bound on reconstruction (dFIL; Maeng, Guo, Hsia & Suh, NeurIPS 2023).

"Bounding the invertibility of privacy-preserving instance encoding using Fisher information" turns a
noisy encoding into a *lower bound* on the error of any unbiased reconstruction. For veil's release
``r = h(x) + mu + sigma * eps`` (eps ~ N(0, I); suppressed elements are replaced by mu and carry
nothing) the release is Gaussian around ``h(x) + mu`` with covariance ``Sigma = diag(sigma^2 / K)`` over
the kept elements (K averaged releases), so the Fisher information about the input x is

    I(x) = J^T Sigma^-1 J,         J = d h(to_input(x)) / d x,

with ``to_input`` the differentiable map from an image in [0, 1] (at the attacker's scoring resolution,
d = 3 s^2 values) to the head's input (:func:`veil.audit.whitebox.input_map`). The paper's diagonal
Fisher information leakage is ``dFIL = tr(I) / d``. By Cramer-Rao, any unbiased estimator has
``E ||x_hat - x||^2 / d >= tr(I^-1) / d >= d / tr(I) = 1 / dFIL`` (the second step is Jensen's
inequality on the eigenvalues), so the mean squared error per input value is at least ``1 / dFIL``
and the PSNR of a [0, 1] image is at most ``10 log10(dFIL)``.

tr(I) is estimated without forming J (millions of entries at 1024^2) by Hutchinson's estimator:
``tr(J^T Sigma^-1 J) = E_v ||Sigma^-1/2 J v||^2`` for ``v ~ N(0, I_d)``; each projection is one
forward-mode Jacobian-vector product (``torch.func.jvp``; the double-backward trick where an operator
has no forward-mode rule). The number of projections and the standard error of the mean are reported.

Caveats (also in the report): the bound holds for *unbiased* estimators only; a decoder trained with
an image prior is biased and may do better than it (it is a yardstick, not a guarantee). It is local:
the information at each image x, computed at the scoring resolution, not the client's full-resolution
input. A conditional transform's sigma(clean) is treated as fixed at the clean activation (its
dependence on x is ignored). Suppressed elements contribute nothing; everything suppressed gives
dFIL = 0 (no unbiased estimator exists: the bound is infinite).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.attack import NoiseSpec
from veil.errors import InputError


def release_precision(spec: NoiseSpec, clean: Tensor, k: int = 1) -> Tensor:
    """Per-element ``K / sigma^2`` on kept elements and 0 on suppressed ones, shaped like ``clean``.

    A conditional transform's sigma is its ``sigma(clean)``, as the sender computed it.
    """
    sigma = spec.sigma
    if spec.conditional is not None:
        with torch.no_grad():
            sigma = spec.conditional.sigma(clean.detach())
    sigma = sigma.to(clean.device).expand_as(clean)
    keep = spec.keep.to(clean.device).expand_as(clean)
    prec = float(k) / sigma.clamp_min(1e-12).pow(2)
    return torch.where(keep, prec, torch.zeros_like(prec)).detach()


def _jvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(f(x), J v): forward mode, or the double-backward trick where forward mode is missing."""
    try:
        res = torch.func.jvp(f, (x,), (v,))
        return res[0].detach(), res[1].detach()
    except (RuntimeError, NotImplementedError):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = f(xg)
            u = torch.zeros_like(out, requires_grad=True)
            (g,) = torch.autograd.grad(out, xg, u, create_graph=True)
            (jv,) = torch.autograd.grad(g, u, v)
        return out.detach(), jv.detach()


def fisher_bound(
    head: nn.Module,
    to_input: Callable[[Tensor], Tensor],
    images01: Tensor,
    spec: NoiseSpec,
    k: int = 1,
    projections: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """dFIL per image of ``images01`` [N, 3, s, s] in [0, 1] and the bounds it implies (see the module).

    Returns ``{"dfil": [...], "dfil_stderr": [...], "mse_bound": [...], "psnr_bound": [...]`` (per
    image) and their means ``"mean_dfil"``, ``"stderr"`` (of that mean), ``"mean_mse_bound"``,
    ``"mean_psnr_bound"``, plus ``"projections"``, ``"k"``, ``"values"`` (d per image)}. dFIL = 0 gives an
    infinite MSE bound and a PSNR bound of minus infinity.
    """
    if images01.dim() != 4 or images01.shape[1] != 3 or images01.shape[0] == 0:
        raise InputError(f"fisher_bound needs images [N, 3, s, s] in [0, 1], got {tuple(images01.shape)}")
    if projections < 2 or k < 1 or batch < 1:
        raise InputError(
            f"fisher_bound needs projections >= 2 (for a standard error), k >= 1 and batch >= 1, got "
            f"projections={projections}, k={k}, batch={batch}"
        )
    head = head.to(device).eval()
    spec = spec.to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = int(images01[0].numel())

    def f(z: Tensor) -> Tensor:
        return head(to_input(z))

    sums: list[Tensor] = []
    starts = range(0, images01.shape[0], batch)
    for start in tqdm(starts, desc="Fisher information", disable=not progress, leave=False):
        x = images01[start : start + batch].to(device).float()
        quad = []
        prec: Tensor | None = None
        for _ in range(projections):
            v = torch.randn(x.shape, generator=gen).to(device)
            out, jv = _jvp(f, x, v)
            if prec is None:
                prec = release_precision(spec, out, k)
            quad.append((jv.pow(2) * prec).flatten(1).sum(1).double().cpu())
        sums.append(torch.stack(quad, 1))  # [n, projections]
    q = torch.cat(sums) / d
    dfil = q.mean(1)
    stderr = q.std(1) / math.sqrt(projections)
    mse = torch.where(dfil > 0, 1.0 / dfil, torch.full_like(dfil, math.inf))
    psnr = torch.where(dfil > 0, 10.0 * torch.log10(dfil), torch.full_like(dfil, -math.inf))
    n = dfil.numel()
    return {
        "dfil": dfil.tolist(),
        "dfil_stderr": stderr.tolist(),
        "mse_bound": mse.tolist(),
        "psnr_bound": psnr.tolist(),
        "mean_dfil": float(dfil.mean()),
        "stderr": float(stderr.pow(2).sum().sqrt() / n),
        "mean_mse_bound": float(mse.mean()),
        "mean_psnr_bound": float(psnr.mean()),
        "projections": projections,
        "k": k,
        "values": d,
    }
