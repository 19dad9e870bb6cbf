"""Benchmark the detection pipeline: preprocess, head, tail, post-processing, total.

    python bench/detect.py [--runs 20] [--threads 2] [--device cpu|cuda] [--json out.json]
    python bench/detect.py --baseline-src OLD/src [--rounds 6]   # this tree vs another, interleaved

Medians over ``--runs`` runs of a real 1920x1080 photo at 1024x1024. Ratios are measured in the same
run: veil's uint8 resize vs a float-first resize, and cached priors vs regenerating them.
``--baseline-src`` (a checkout of another revision, e.g. ``git worktree add /tmp/old 5a606f4``) runs
this benchmark and that revision's own ``bench/detect.py`` alternately, ``--rounds`` times each, and
prints per stage the median of each side, their ratio (this tree / baseline) and the ratio of the
best rounds (other work on a shared machine only slows rounds down).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, WEIGHTS, full_hd_image, median_ms, synced
from veil.faceboxes.detect import PostProcess, build_detector, priors


def float_first_preprocess(img: torch.Tensor) -> torch.Tensor:
    """The usual way (float conversion, then resize): the baseline veil's preprocessing is compared to."""
    mean = torch.tensor([104.0, 117.0, 123.0], device=img.device).view(1, 3, 1, 1)
    x = img.flip(0).float().unsqueeze(0) - mean
    return F.interpolate(x, size=(1024, 1024), mode="bilinear", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (preprocessing and the model)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another revision's src/ folder")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds with --baseline-src")
    args = ap.parse_args()
    if args.baseline_src is not None:
        compare(args)
        return
    torch.set_num_threads(args.threads)
    if not WEIGHTS.is_file():
        raise SystemExit(f"weights not found: {WEIGHTS} (set VEIL_SHARED)")

    img = full_hd_image()
    device = torch.device(args.device)
    det = build_detector(WEIGHTS, device=args.device)
    post = PostProcess()
    batch = det.preprocess([img])
    with torch.inference_mode():
        x = batch.tensor.to(device)
        act = det.head(x)
        loc, conf = det.tail(act)
        r = args.runs
        ms = {
            "preprocess": median_ms(synced(lambda: det.preprocess([img]), device), r),
            "head": median_ms(synced(lambda: det.head(x), device), r),
            "tail": median_ms(synced(lambda: det.tail(act), device), r),
            "postprocess": median_ms(synced(lambda: post(loc, conf, batch), device), r),
            "total": median_ms(synced(lambda: det.detect([img]), device), r),
        }
        baseline_pre = median_ms(synced(lambda: float_first_preprocess(img.to(device)), device), r)
        regen = median_ms(lambda: priors.__wrapped__(1024, 1024), r)
        cached = median_ms(lambda: priors(1024, 1024), r)
    ms["forward"] = ms["head"] + ms["tail"]

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"veil detect benchmark: 1920x1080 photo -> 1024x1024 on {where}, median of {r} runs")
    print(f"{'stage':<14}{'ms':>10}")
    for k in ("preprocess", "head", "tail", "forward", "postprocess", "total"):
        print(f"{k:<14}{ms[k]:>10.2f}")
    print(
        f"preprocess: float-first resize {baseline_pre:.2f} ms -> veil {ms['preprocess']:.2f} ms "
        f"({baseline_pre / ms['preprocess']:.2f}x faster)"
    )
    print(f"priors: regenerate {regen:.3f} ms -> cached {cached * 1000:.1f} us per image")
    report = {
        "device": where,
        "threads": args.threads,
        "runs": r,
        "ms": ms,
        "baseline_float_first_preprocess_ms": baseline_pre,
        "priors_regenerate_ms": regen,
        "priors_cached_ms": cached,
        "detections": int(det.detect([img])[0].shape[0]),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def compare(args: argparse.Namespace) -> None:
    """This tree and ``--baseline-src`` alternately (A B A B ...), each its own bench/detect.py."""
    here = Path(__file__).resolve()
    base = args.baseline_src.resolve()
    sides = {
        "this tree": (here, here.parents[1] / "src"),
        "baseline": (base.parent / "bench/detect.py", base),
    }
    stages = ("preprocess", "head", "tail", "postprocess", "total")
    ms: dict[str, dict[str, list[float]]] = {side: {k: [] for k in stages} for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        for i in range(args.rounds):
            for side, (script, src) in sides.items():
                env = {**os.environ, "PYTHONPATH": str(src), "VEIL_SHARED": str(SHARED)}
                cmd = [sys.executable, str(script), "--runs", str(args.runs), "--threads", str(args.threads)]
                cmd += ["--device", args.device, "--json", str(out)]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                report = json.loads(out.read_text())
                for k in stages:
                    ms[side][k].append(report["ms"][k])
                print(f"round {i + 1}/{args.rounds} {side}: total {report['ms']['total']:.1f} ms", flush=True)
    # Other work on the machine only ever slows a round down: the best round is the steadier estimate.
    print(f"{'stage':<14}{'this tree ms':>14}{'baseline ms':>14}{'ratio':>8}{'best-round ratio':>18}")
    summary = {}
    for k in stages:
        a, b = statistics.median(ms["this tree"][k]), statistics.median(ms["baseline"][k])
        best = min(ms["this tree"][k]) / min(ms["baseline"][k])
        summary[k] = {"this_tree_ms": a, "baseline_ms": b, "ratio": a / b, "best_round_ratio": best}
        print(f"{k:<14}{a:>14.2f}{b:>14.2f}{a / b:>8.3f}{best:>18.3f}")
    if args.json:
        record = {"rounds": args.rounds, "runs": args.runs, "stages": summary}
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
