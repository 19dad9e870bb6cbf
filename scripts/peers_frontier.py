"""Peer defences vs veil's transforms at one split: accuracy retained, attacker SSIM, the frontier plot.

    .venv/bin/python scripts/mask_lfw_crops.py --out /tmp/lfw-mask
    .venv/bin/python scripts/peers_frontier.py --model mask-compliance --split features.11 \\
        --aux /tmp/lfw-mask/attack --eval /tmp/lfw-mask/test --out /tmp/peers-mask

Writes ``peers.json`` (every row, the verdicts, the budgets) and ``peers-frontier.png`` under ``--out``
(:func:`veil.audit.peers.run_peers`). The task's metric and training inputs come from the model's
``ModelEntry.peers`` hook; veil's transforms default to the model's shipped ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from veil.audit.attack import AttackConfig, ImageSet
from veil.audit.inputs import default_output_size
from veil.audit.peers import FAMILIES, PeerConfig, run_peers
from veil.errors import InputError
from veil.imageio import list_images
from veil.models.public import build_model, resolve_entry


def _levels(items: list[str]) -> dict[str, tuple[float, ...]]:
    out = {}
    for item in items:
        fam, _, values = item.partition("=")
        out[fam] = tuple(float(v) for v in values.split(",") if v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mask-compliance")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--split", default=None)
    ap.add_argument("--aux", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--levels", nargs="*", default=[], help="family=a,b,c (default: DEFAULT_LEVELS)")
    ap.add_argument("--transform", action="append", default=None, help="veil transform (default: shipped)")
    ap.add_argument("--size", type=int, default=None, help="audit input size (default: the task's)")
    ap.add_argument("--output-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--adapt-steps", type=int, default=100)
    ap.add_argument("--ks", default="1,16")
    ap.add_argument("--max-aux", type=int, default=None)
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--peer-steps", type=int, default=200)
    ap.add_argument("--tail-steps", type=int, default=100)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hybrid", action="store_true", help="add the white-box hybrid attack on every defence")
    ap.add_argument("--inversion-steps", type=int, default=100, help="the hybrid's steps (with --hybrid)")
    ap.add_argument("--inversion-images", type=int, default=8, help="evaluation images it inverts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    entry = resolve_entry(args.model)
    if entry.peers is None:
        raise InputError(f"model {args.model} has no peers hook (ModelEntry.peers)")
    task = entry.peers()
    task.draws = args.draws
    weights = args.weights or entry.weights or getattr(task, "weights", None)  # FaceBoxes: the hook's
    model = build_model(args.model, weights)
    size = int(args.size or task.batches[0].shape[-1])
    out_size = default_output_size((size, size), args.output_size)
    cfg = AttackConfig(
        input_size=size,
        output_size=out_size,
        width=args.width,
        steps=args.steps,
        adapt_steps=args.adapt_steps,
        ks=tuple(int(k) for k in args.ks.split(",")),
        val_images=96,
        eval_every=max(10, args.steps // 10),
    )
    aux = ImageSet.load(list_images(args.aux)[: args.max_aux], out_size, "aux")
    ev = ImageSet.load(list_images(args.eval)[: args.max_eval], out_size, "eval")
    transforms = args.transform
    if transforms is None:
        transforms = [str(p) for p in entry.transforms()] if entry.transforms is not None else []
    families = [f for f in args.families.split(",") if f]
    extra = None
    if args.hybrid:
        from veil.audit.peer_attacks import hybrid_attack
        from veil.audit.whitebox import WhiteboxConfig

        wb = WhiteboxConfig(hybrid_steps=args.inversion_steps, images=args.inversion_images)
        extra = hybrid_attack(_input_spec(args.model, transforms, size), wb, cfg.ks)
    res = run_peers(
        model,
        args.split or entry.split or "",
        task,
        aux,
        ev,
        cfg,
        families,
        _levels(args.levels),
        transforms,
        PeerConfig(steps=args.peer_steps, tail_steps=args.tail_steps, progress=True),
        size=size,
        extra_attack=extra,
        out=args.out,
        model_name=args.model,
    )
    res["seconds"] = time.time() - start
    (args.out / "peers.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"floor {res['floor']:.3f}; clean {task.metric} {res['clean_metric']:.3f}")
    print("| defence | level | retained | SSIM decoder K=1 | K=16 | hybrid K=1 | K=16 | strongest |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        d, h = r["ssim"]["decoder"], r["ssim"].get("hybrid", {})
        cells = [d.get("1"), d.get("16"), h.get("1"), h.get("16")]
        print(
            f"| {r['family']} | {r['level']:g} | {r['accuracy_retained']:.1%} | "
            + " | ".join("–" if v is None else f"{v:.3f}" for v in cells)
            + f" | {r['strongest']:.3f} |"
        )
    print("\n".join(res["verdicts"]))
    print(f"{res['png']} ({res['seconds']:.0f} s)")


def _input_spec(model: str, transforms: list[str], size: int) -> dict[str, object]:
    """How the white-box attacker maps [0, 1] images to the model's input (FaceBoxes: BGR minus its mean)."""
    if model == "faceboxes":
        from veil.audit.faceboxes import input_spec

        return input_spec(size)
    if not transforms:
        raise InputError("--hybrid needs a --transform whose input spec says how images are prepared")
    from veil.audit.inputs import read_transform

    spec = dict(read_transform(transforms[0]).meta["input_spec"])
    spec["shape"] = [int(spec["shape"][0]), size, size]
    return spec


if __name__ == "__main__":
    main()
