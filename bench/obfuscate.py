"""Benchmark obfuscation: the reference design's five timed runs, and the noise step in isolation.

    python bench/obfuscate.py [--transform DIR] [--runs 200] [--threads 2] [--device cpu|cuda] [--json OUT]

(1) The reference design's measurement: a 1920x1080 photo, five runs of the obfuscation step
(preprocess + head + noise), each time and the mean. (2) Medians from one run of: the noise step
(sample + add, 1x128x32x32), ``torch.randn_like`` alone, and a plain tensor copy; and the noise step's
share of the client pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WEIGHTS, full_hd_image, median_ms, synced
from veil.faceboxes.pipeline import load_pipeline
from veil.noise import NoiseTransform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--transform", type=Path, default=None, help="default: a shipped transform, else a fresh one"
    )
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    transform = args.transform
    if transform is None:
        from veil.faceboxes.shipped import shipped_transforms

        shipped = shipped_transforms()
        transform = shipped[min(shipped)] if shipped else None
    det = load_pipeline(WEIGHTS, transform, device=args.device)
    if det.noise is None:
        det.noise = NoiseTransform((128, 32, 32), smax=4.0, rho_init=0.0).to(device)
    img = full_hd_image()

    obfuscate = synced(lambda: det.release(det.preprocess([img])), device)

    for _ in range(3):
        obfuscate()
    five = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        obfuscate()
        five.append((time.perf_counter() - t0) * 1000)

    batch = det.preprocess([img])
    with torch.inference_mode():
        act = det.head(batch.tensor.to(device))
        noise = det.noise

        r = args.runs
        ms = {
            "noise_step": median_ms(synced(lambda: noise(act), device), r),
            "randn_like": median_ms(synced(lambda: torch.randn_like(act), device), r),
            "copy": median_ms(synced(lambda: act.clone(), device), r),
            "client_pipeline": median_ms(obfuscate, max(20, r // 10)),
        }
    share = 100 * ms["noise_step"] / ms["client_pipeline"]
    label = f"{device.type}" + (
        f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {args.threads} threads"
    )
    print(f"veil obfuscation benchmark on {label}; transform: {transform or 'fresh NoiseTransform'}")
    print("reference-design measurement (1920x1080 photo, preprocess + head + noise), five runs:")
    print("  " + ", ".join(f"{t:.2f} ms" for t in five) + f"; mean {sum(five) / 5:.3f} ms")
    print(f"medians over {r} runs:")
    for k in ("noise_step", "randn_like", "copy", "client_pipeline"):
        print(f"  {k:<16}{ms[k]:>9.3f} ms")
    print(
        f"noise step = {ms['noise_step'] / ms['randn_like']:.2f}x randn_like, "
        f"{ms['noise_step'] / ms['copy']:.1f}x a copy, {share:.2f}% of the client pipeline (goal <= 2%)"
    )
    report = {
        "device": label,
        "five_runs_ms": five,
        "mean_ms": sum(five) / 5,
        "ms": ms,
        "noise_share_pct": share,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
