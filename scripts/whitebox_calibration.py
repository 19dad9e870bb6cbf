"""Decoder vs rMLE vs hybrid SSIM and the dFIL bound on two shipped setups (issue 36, CPU budget).

    .venv/bin/python scripts/mask_lfw_crops.py --out /tmp/lfw-mask                  # mask setup's crops
    .venv/bin/python scripts/whitebox_calibration.py --setup mask --crops /tmp/lfw-mask --out wb-mask.json
    .venv/bin/python scripts/whitebox_calibration.py --setup faceboxes --out wb-fb.json

Setups: ``mask``: the mask-compliance default transform (features.11, alpha 0.2, wire 96x2x2 at 64^2)
and its clean features.11 head, on LFW crops cut like the classifier's inputs, scored at 64^2;
``faceboxes``: the default FaceBoxes transform (inception3, alpha 0.12, per-channel) through
``veil.faceboxes.generic.from_transform``, audited at ``--size`` (512^2: wire 128x16x16) and the clean
inception3 head, scored at 128^2. For each target a decoder is trained with ``train_attacker`` at a
small budget (``--decoder-steps`` on ``--aux`` auxiliary images; cached under ``--cache``), then
:func:`veil.audit.whitebox.whitebox_measure` runs rMLE, the hybrid and dFIL on the first ``--images``
LFW test images with one seeded release per K. One thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.audit.attack import (
    AttackConfig,
    Attacker,
    ImageSet,
    NoiseSpec,
    adapt_attacker,
    split_validation,
    train_attacker,
)
from veil.audit.inputs import activations, default_output_size
from veil.audit.metrics import to_unit
from veil.audit.store import load_attacker, save_attacker
from veil.audit.whitebox import WhiteboxConfig, input_map, whitebox_measure
from veil.imageio import list_images

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MASK = ROOT / "src/veil/mask_compliance/transforms/mask-compliance-features.11-alpha0.2"
FACEBOXES = ROOT / "src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12"


def targets(args: argparse.Namespace) -> tuple[list[tuple[str, nn.Module, Any]], dict[str, Any], Path, Path]:
    """[(name, head, noise or None)], the input spec, the auxiliary and evaluation folders."""
    if args.setup == "mask":
        from veil.audit.inputs import load_protected
        from veil.models import build_model

        p = load_protected(MASK, build_model("mask-compliance"))
        spec = p.meta["input_spec"]
        if args.split != "features.11":  # a clean head at another split only
            from veil.protection.store import example_from
            from veil.split.graph import cut

            head = cut(build_model("mask-compliance"), args.split, example_from(spec))[0].eval()
            return [(f"clean {args.split}", head, None)], spec, *_crops(args)
        return [("clean features.11", p.head, None), (MASK.name, p.head, p.noise)], spec, *_crops(args)
    from veil.faceboxes.generic import from_transform, protect_faceboxes

    weights = SHARED / "weights/faceboxes/FaceBoxes.pth"
    p = from_transform(FACEBOXES, weights)
    clean = protect_faceboxes(weights, split="inception3", size=args.size).head.eval()
    spec = p.meta["input_spec"]
    lfw = SHARED / "data/lfw"
    return (
        [("clean inception3", clean, None), (FACEBOXES.name, p.head.eval(), p.noise)],
        spec,
        lfw / "attack",
        lfw / "test",
    )


def _crops(args: argparse.Namespace) -> tuple[Path, Path]:
    return args.crops / "attack", args.crops / "test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=("mask", "faceboxes"), required=True)
    ap.add_argument("--crops", type=Path, default=Path("/tmp/lfw-mask"))
    ap.add_argument("--split", default="features.11", help="mask: another split gives its clean head only")
    ap.add_argument("--size", type=int, default=512, help="FaceBoxes audit size")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--aux", type=int, default=600)
    ap.add_argument("--decoder-steps", type=int, default=400)
    ap.add_argument("--adapt-steps", type=int, default=100)
    ap.add_argument("--ks", default="1,16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--tv", type=float, default=0.05)
    ap.add_argument("--anchor", type=float, default=10.0, help="with --calibration 0")
    ap.add_argument("--calibration", type=int, default=4, help="held-out aux images picking the anchor")
    ap.add_argument("--grid", default="0,1,10,100,inf", help="the hybrid's anchor weights to calibrate")
    ap.add_argument("--hybrid-steps", type=int, default=200)
    ap.add_argument("--hybrid-lr", type=float, default=0.05)
    ap.add_argument("--param-size", type=int, default=0, help="0: the output size")
    ap.add_argument("--projections", type=int, default=8)
    ap.add_argument("--only", default="", help="run only targets whose name contains this")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/whitebox-decoders"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true", help="progress bars (default: one line per target)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = tuple(int(k) for k in args.ks.split(","))
    heads, spec, aux_dir, eval_dir = targets(args)
    size = (
        (args.size, args.size)
        if args.setup == "faceboxes"
        else (int(spec["shape"][1]), int(spec["shape"][2]))
    )
    out_size = default_output_size(size, 128)
    acfg = AttackConfig(
        output_size=out_size, steps=args.decoder_steps, adapt_steps=args.adapt_steps, ks=ks, val_images=48
    )
    aux = ImageSet.load(list_images(aux_dir)[: args.aux], out_size, "aux")
    ev = ImageSet.load(list_images(eval_dir)[: args.images], out_size, "test")
    prior = to_unit(aux.targets).mean(0)
    wcfg = WhiteboxConfig(
        steps=args.steps,
        lr=args.lr,
        tv_weight=args.tv,
        anchor_weight=args.anchor,
        hybrid_steps=args.hybrid_steps,
        hybrid_lr=args.hybrid_lr,
        param_size=args.param_size or out_size,
        images=args.images,
        projections=args.projections,
        calibration_images=max(1, args.calibration),
        anchor_grid=tuple(float(w) for w in args.grid.split(",")),
    )
    val_idx = split_validation(aux.paths, acfg.val_images)[1][: max(1, args.calibration)]
    report: dict[str, Any] = {
        "setup": args.setup,
        "size": list(size),
        "output_size": out_size,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for name, head, noise in heads:
        if args.only and args.only not in name:
            continue
        t0 = time.time()
        a_aux = activations(head, aux.images, spec, size, progress=args.progress)
        a_ev = activations(head, ev.images, spec, size, progress=args.progress)
        nspec = None if noise is None else NoiseSpec.of(noise, a_aux.shape[1:])
        tag = f"{args.setup}-{size[0]}-{name.replace(' ', '_')}-{args.decoder_steps}-{args.aux}"
        decoders: dict[int, Attacker] = {}
        for k in ks if nspec is not None else (1,):
            path = args.cache / f"{tag}-k{k}.safetensors"
            if path.exists():
                decoders[k] = load_attacker(path)
                continue
            if k == 1:
                decoders[1] = train_attacker(
                    a_aux, aux.targets, aux.paths, nspec, acfg, f"decoder {name}", args.progress
                )
            else:
                decoders[k] = adapt_attacker(
                    decoders[1], k, a_aux, aux.targets, aux.paths, acfg, args.progress
                )
            save_attacker(decoders[k], path)
        to_input = input_map(spec, size)
        cal = (a_aux[val_idx], aux.targets[val_idx]) if args.calibration > 0 else None
        res = whitebox_measure(
            head, to_input, a_ev, ev.targets, nspec, decoders, prior, wcfg, ks, args.progress, cal
        )
        res.metrics["seconds"] = round(time.time() - t0, 1)
        report[name] = res.metrics
        m = res.metrics
        line = " ".join(
            f"{a}:{m[a]['ssim']['1']:.3f}/{m[a]['ssim'][str(ks[-1])]:.3f}"
            for a in ("decoder", "rmle", "hybrid")
            if a in m
        )
        fisher = m.get("fisher")
        bound = "" if not fisher else f" dFIL(K=1) {fisher['dfil']['1']:.3g}+-{fisher['stderr']['1']:.2g} "
        bound += (
            "" if not fisher else f"mse>={fisher['mse_bound']['1']} vs rmle mse {m['rmle']['mse']['1']:.4f}"
        )
        print(f"{name}: floor {m['floor']['ssim']:.3f}  SSIM K=1/K={ks[-1]} {line}{bound}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
