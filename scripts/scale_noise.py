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

Three more switches take the rest of the release apart, to find *which* part loses what a target needs:
``--unsuppress`` sends the suppressed channels' real values, ``--drop-mu`` removes μ, and ``--revert-head T
--weights W`` moves a fine-tuned head block T of the way back to the base checkpoint's (1: the original
block). ``--scale 0 --unsuppress --drop-mu --revert-head 1`` is the clean activation: its tuned-tail AP says
what the tail tuning itself can reach.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from veil.artifact import Transform, load_transform, save_transform
from veil.errors import VeilError
from veil.faceboxes.registry import create_model

SATURATED = 8.0  # tanh(-8) = -1 + 2e-7: sigma is smin plus 1e-7 of the range, yet log(mean sigma) is finite


def scaled_rho(
    rho: torch.Tensor, sigma: torch.Tensor, smin: float, smax: float, scale: float
) -> torch.Tensor:
    """The rho whose sigma is ``scale`` x ``sigma`` (clamped to the learnable range)."""
    if smax <= smin:
        return rho.clone()
    target = scale * (sigma - smin) / (smax - smin)  # the new sigma's place in [smin, smax], in [0, 1]
    return torch.atanh((2 * target - 1).clamp(-math.tanh(SATURATED), math.tanh(SATURATED)))


def reverted_head(tr: Transform, weights: Path, t: float) -> dict[str, torch.Tensor]:
    """The transform's head block moved ``t`` of the way back to the base checkpoint's block."""
    if not tr.head_state:
        raise SystemExit(
            "--revert-head: this transform has no fine-tuned head block (trained without --train-head)"
        )
    base, _ = create_model(tr.meta["model"], weights=weights).split(tr.meta["split"])
    orig = base.state_dict()
    return {
        k: (1 - t) * v + t * orig[k].to(v.dtype) if v.is_floating_point() else v.clone()
        for k, v in tr.head_state.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transform", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, required=True, help="multiply sigma by this (0: no noise)")
    ap.add_argument(
        "--unsuppress",
        action="store_true",
        help="also send the suppressed channels' real values: is what suppression removes what is lost?",
    )
    ap.add_argument("--drop-mu", action="store_true", help="also set mu to 0")
    ap.add_argument(
        "--revert-head",
        type=float,
        default=0.0,
        metavar="T",
        help="move the head block T of the way back (0..1)",
    )
    ap.add_argument("--weights", type=Path, help="the base checkpoint (needed by --revert-head)")
    args = ap.parse_args()
    for name in ("scale", "revert_head"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if args.revert_head and args.weights is None:
        raise SystemExit(
            "--revert-head needs --weights: the base checkpoint whose head block to move back to"
        )
    if args.out.resolve() == args.transform.resolve():
        raise SystemExit("OUT must differ from TRANSFORM: a diagnostic copy never replaces a release")
    try:
        tr = load_transform(args.transform, args.weights)
        head = reverted_head(tr, args.weights, args.revert_head) if args.revert_head else tr.head_state
    except VeilError as exc:
        raise SystemExit(str(exc)) from None
    noise = tr.noise
    if noise.conditional:
        raise SystemExit("conditional transforms predict sigma per request: scale their network instead")
    with torch.no_grad():
        noise.rho.copy_(scaled_rho(noise.rho, noise.sigma(), noise.smin, noise.smax, args.scale))
        if args.unsuppress:
            noise.keep.fill_(True)
        if args.drop_mu:
            noise.mu.zero_()
    what = [f"sigma x {args.scale}"]
    if args.unsuppress:
        what.append("nothing suppressed")
    if args.drop_mu:
        what.append("mu 0")
    if args.revert_head:
        what.append(f"head {args.revert_head} back")
    meta = dict(tr.meta) | {"default": False, "diagnostic": f"{', '.join(what)} of {args.transform}"}
    save_transform(args.out, noise, meta, tr.tail_state, head)
    print(f"wrote {args.out}: mean sigma {float(noise.mean_sigma()):.4g} (never serve it)")


if __name__ == "__main__":
    main()
