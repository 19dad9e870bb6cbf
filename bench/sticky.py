"""Sticky noise (``veil.sticky``): what it costs the client, and what it buys against repeated queries.

    python bench/sticky.py cost [--batch 1,16,64] [--runs 30] [--faceboxes] [--json out.json]
    python scripts/mask_lfw_crops.py --out /tmp/lfw-mask
    python bench/sticky.py repeats --crops /tmp/lfw-mask [--ks 1,4,16,64] [--steps 1500] [--width 64]
        [--adapt-steps 300] [--max-aux N] [--json out.json]

``cost``: the mask-compliance client's release (shipped default transform, crops of the mask-scenes test
half) with fresh noise (``q.release(x)``) and with sticky noise (``q.release(x, sticky_key=key)``: HMAC-SHA256
of each crop's input + one SHAKE-256 noise stream per crop), timed interleaved in one run (calls taken in
turn, so a shared machine's load hits both alike), one thread; the ratio sticky / fresh, and the two sticky
steps alone (seeds, noise). ``--faceboxes`` adds FaceBoxes' client (``VeilClient.release`` of one photo at
1024 x 1024, the default transform: a 12 MB head input to hash and a 128 x 32 x 32 noise stream).

``repeats``: ``veil.audit.repeats.repeats_measure`` on the mask-compliance default transform
(``features.11``, α 0.2) with the LFW crops ``scripts/mask_lfw_crops.py`` cuts: a decoder attacker trained on
the crops of ``attack/`` (``--steps``, ``--width``), adapted to every K > 1 (``--adapt-steps``), scored on
``test/``: fresh vs sticky SSIM/PSNR per K, the linkage AUC of repeats, the sticky noise's correlation
between different images; the clean release and the mean-image floor for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import veil
from _common import PHOTO, SHARED, WEIGHTS, interleaved_median_ms
from veil.sticky import new_key, sticky_eps, sticky_seeds


def _mask_model() -> tuple[veil.Protected, Path]:
    from veil.mask_compliance.model import load_classifier
    from veil.mask_compliance.shipped import shipped_default

    path = shipped_default()
    assert path is not None
    return veil.load(path, load_classifier().eval()), path


def cost(args: argparse.Namespace) -> dict[str, Any]:
    from veil.mask_compliance.data import crops, load_faces
    from veil.mask_compliance.model import to_input

    root = SHARED / "data" / "mask-scenes"
    if not (root / "annotations").is_dir():
        raise SystemExit(f"mask-scenes not found under {root} (set VEIL_SHARED to the shared folder)")
    batches = [int(b) for b in args.batch.split(",")]
    q, path = _mask_model()
    x_all = to_input(crops(load_faces(root, "test")[: max(batches)])[0])
    key = new_key()
    rows = []
    print(f"{path.name}: fresh vs sticky release, 1 thread, median of {args.runs} interleaved calls")
    print("| crops | fresh (ms) | sticky (ms) | sticky / fresh | of which seeds (ms) | noise stream (ms) |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in batches:
            x = x_all[:batch]
            wire = q.release(x).shape[1:]
            seeds = sticky_seeds(key, x)
            med = interleaved_median_ms(
                {
                    "fresh": lambda x=x: q.release(x),
                    "sticky": lambda x=x: q.release(x, sticky_key=key),
                    "seeds": lambda x=x: sticky_seeds(key, x),
                    "eps": lambda s=seeds, w=wire: sticky_eps(w, s, torch.float32, "cpu"),
                },
                runs=args.runs,
            )
            ratio = med["sticky"] / med["fresh"]
            rows.append({"model": "mask-compliance", "batch": batch} | med | {"ratio": ratio})
            print(
                f"| {batch} | {med['fresh']:.3f} | {med['sticky']:.3f} | {ratio:.2f} | "
                f"{med['seeds']:.3f} | {med['eps']:.3f} |"
            )
    if args.faceboxes:
        rows.append(_faceboxes_cost(args.runs, key))
    return {"transform": path.name, "rows": rows}


def _faceboxes_cost(runs: int, key: bytes) -> dict[str, Any]:
    from veil.client import VeilClient
    from veil.faceboxes.shipped import SHIPPED_DIR
    from veil.imageio import load_image

    transform = SHIPPED_DIR / "faceboxes-inception3-alpha0.12"
    image = [load_image(PHOTO)]
    fresh = VeilClient("127.0.0.1:9", transform=transform, weights=WEIGHTS)
    sticky = VeilClient("127.0.0.1:9", transform=transform, weights=WEIGHTS, sticky_key=key)
    med = interleaved_median_ms(
        {"fresh": lambda: fresh.release(image), "sticky": lambda: sticky.release(image)}, runs=runs
    )
    ratio = med["sticky"] / med["fresh"]
    print(
        f"\nFaceBoxes {transform.name}, VeilClient.release of one photo at 1024x1024: fresh "
        f"{med['fresh']:.1f} ms, sticky {med['sticky']:.1f} ms, sticky / fresh {ratio:.3f}"
    )
    return {"model": "faceboxes", "batch": 1} | med | {"ratio": ratio}


def repeats(args: argparse.Namespace) -> dict[str, Any]:
    from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec, adapt_attacker, score, train_attacker
    from veil.audit.inputs import activations
    from veil.audit.measure import floor
    from veil.audit.repeats import repeats_measure
    from veil.imageio import list_images

    ks = tuple(sorted({int(k) for k in args.ks.split(",")} | {1}))
    q, path = _mask_model()
    cfg = AttackConfig(
        output_size=64, width=args.width, steps=args.steps, adapt_steps=args.adapt_steps, ks=ks, seed=0
    )
    aux = ImageSet.load(list_images(args.crops / "attack")[: args.max_aux], 64, "aux")
    test = ImageSet.load(list_images(args.crops / "test"), 64, "test")
    spec_in, size = q.meta["input_spec"], (64, 64)
    a = activations(q.head, aux.images, spec_in, size, desc="head (aux)")
    e = activations(q.head, test.images, spec_in, size, desc="head (test)")
    spec = NoiseSpec.of(q.noise, a.shape[1:])
    t0 = time.perf_counter()
    clean = train_attacker(a, aux.targets, aux.paths, None, cfg, "attack clean release")
    base = train_attacker(a, aux.targets, aux.paths, spec, cfg, "attack transform")
    attackers = {1: [base]}
    for k in ks[1:]:
        attackers[k] = [adapt_attacker(base, k, a, aux.targets, aux.paths, cfg)]
    out = repeats_measure(attackers, e, test, spec, ks=ks, seed=cfg.seed)
    out["clean_release_ssim"] = float(score(clean, e, test.targets)[0].mean())
    out["floor_ssim"] = floor(aux, {"test": test})["test"]["ssim"]
    out["attacker"] = {
        "steps": cfg.steps,
        "width": cfg.width,
        "adapt_steps": cfg.adapt_steps,
        "aux": len(aux.paths),
        "test": len(test.paths),
        "best_val_ssim": base.best_val_ssim,
        "converged": base.converged,
        "seconds": time.perf_counter() - t0,
    }
    out["transform"] = path.name
    print(f"\n{path.name}: {len(test.paths)} LFW test crops, attacker {cfg.steps} steps width {cfg.width}")
    print(
        f"mean-image floor SSIM {out['floor_ssim']:.3f}, clean release SSIM {out['clean_release_ssim']:.3f}"
    )
    print("| K | fresh SSIM | sticky SSIM | fresh PSNR | sticky PSNR |")
    print("|---|---|---|---|---|")
    for k in out["ks"]:
        f, s = out["fresh"], out["sticky"]
        print(
            f"| {k} | {f['ssim'][str(k)]:.3f} | {s['ssim'][str(k)]:.3f} | "
            f"{f['psnr'][str(k)]:.2f} | {s['psnr'][str(k)]:.2f} |"
        )
    link, corr = out["linkage"], out["noise_corr"]
    print(
        f"linkage AUC of repeats (-L2, {link['same_pairs']} same-image vs {link['pairs']} two-image pairs): "
        f"fresh {link['fresh_auc']:.3f}, sticky {link['sticky_auc']:.3f}"
    )
    print(
        f"sticky noise, two different images: mean |r| {corr['mean_abs']:.4f} (independent noise: "
        f"{corr['chance_mean_abs']:.4f}), max |r| {corr['max_abs']:.4f} over {corr['elements']} elements"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost", help="client-side cost of sticky noise")
    c.add_argument("--batch", default="1,16,64")
    c.add_argument("--runs", type=int, default=30)
    c.add_argument("--faceboxes", action="store_true", help="also FaceBoxes' client at 1024x1024")
    r = sub.add_parser("repeats", help="fresh vs sticky under K repeated queries (mask-compliance)")
    r.add_argument("--crops", type=Path, default=Path("/tmp/lfw-mask"))
    r.add_argument("--ks", default="1,4,16,64")
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--width", type=int, default=64)
    r.add_argument("--adapt-steps", type=int, default=300)
    r.add_argument("--max-aux", type=int, default=None)
    for p in (c, r):
        p.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = cost(args) if args.what == "cost" else repeats(args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"-> {args.json}")


if __name__ == "__main__":
    main()
