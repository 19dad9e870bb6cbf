"""A diagnostic copy of a transform with its noise scaled: how much of the lost AP is the noise's?

    python scripts/scale_noise.py TRANSFORM OUT --scale 0
    python scripts/frontier_point.py OUT --draws 1                  # the same tail, no noise
    veil tune-tail -t OUT --out OUT-tuned && python scripts/frontier_point.py OUT-tuned --draws 1

The copy keeps the release's deterministic part (the fine-tuned head block, μ, the suppressed
channels) and multiplies every σ by ``--scale`` (0: no noise at all). Evaluated with the transform's own
tail, it says whether the random draws cost the accuracy; with a tail tuned on it, it is the ceiling
that *any* server-side tail can reach for that release: if the ceiling is below a target, only a new
release (and a new privacy audit) can meet it. The copy is marked ``"diagnostic"`` (and so is any tail
tuned from it): it hides nothing the scale removed, so the Triton client refuses to send it unless told
``--allow-clean``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from veil.artifact import load_transform, save_transform
from veil.errors import VeilError

SATURATED = 8.0  # tanh(-8) = -1 + 2e-7: sigma is smin plus 1e-7 of the range, yet log(mean sigma) is finite


def scaled_rho(
    rho: torch.Tensor, sigma: torch.Tensor, smin: float, smax: float, scale: float
) -> torch.Tensor:
    """The rho whose sigma is ``scale`` x ``sigma`` (clamped to the learnable range)."""
    if smax <= smin:
        return rho.clone()
    target = scale * (sigma - smin) / (smax - smin)  # the new sigma's place in [smin, smax], in [0, 1]
    return torch.atanh((2 * target - 1).clamp(-math.tanh(SATURATED), math.tanh(SATURATED)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transform", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, required=True, help="multiply sigma by this (0: no noise)")
    args = ap.parse_args()
    if not 0.0 <= args.scale <= 1.0:
        raise SystemExit(f"--scale must be in [0, 1] (0: no noise), got {args.scale}")
    if args.out.resolve() == args.transform.resolve():
        raise SystemExit("OUT must differ from TRANSFORM: a diagnostic copy never replaces a release")
    try:
        tr = load_transform(args.transform)
    except VeilError as exc:
        raise SystemExit(str(exc)) from None
    noise = tr.noise
    if noise.conditional:
        raise SystemExit("conditional transforms predict sigma per request: scale their network instead")
    with torch.no_grad():
        noise.rho.copy_(scaled_rho(noise.rho, noise.sigma(), noise.smin, noise.smax, args.scale))
    meta = dict(tr.meta) | {"default": False, "diagnostic": f"sigma x {args.scale} of {args.transform}"}
    save_transform(args.out, noise, meta, tr.tail_state, tr.head_state)
    print(f"wrote {args.out}: mean sigma {float(noise.mean_sigma()):.4g} (never serve it)")


if __name__ == "__main__":
    main()
