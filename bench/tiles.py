"""Benchmark ``--tiles``: what the crowd mode costs per image against the full frame, in the same run.

    python bench/tiles.py [--runs 10] [--threads 2] [--tiles 2] [--json out.json]

The default release (alpha 0.12) on the WIDER sample's 80-face crowd photo and on the 1920x1080 benchmark
frame, local pipeline: full frame vs full frame + K x K painted crops (two batches). Calls are interleaved,
so the ratio holds on this noisy machine even when absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, WEIGHTS, full_hd_image, interleaved_median_ms
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.tiles import TileGrid, tiled
from veil.imageio import atomic_write_bytes, load_image

DEFAULT = Path(__file__).resolve().parents[1] / "src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12"
CROWD = "12_Group_Group_12_Group_Group_12_217.jpg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not WEIGHTS.is_file():
        raise SystemExit(f"weights not found: {WEIGHTS} (set VEIL_SHARED)")
    crowd = next((SHARED / "data/widerface-sample").rglob(CROWD), None)
    if crowd is None:
        raise SystemExit(f"benchmark image not found: {CROWD} under {SHARED}/data/widerface-sample")
    det = load_pipeline(WEIGHTS, DEFAULT)
    grid = TileGrid(tiles=args.tiles)
    many = tiled(det.detect, grid, det.size)
    results = {}
    for name, image in (("crowd photo", load_image(crowd)), ("1920x1080 frame", full_hd_image())):
        ms = interleaved_median_ms(
            {"full frame": partial(det.detect, [image]), "tiled": partial(many, [image])}, runs=args.runs
        )
        found = {
            k: int((f([image])[0][:, 4] >= 0.5).sum()) for k, f in (("full", det.detect), ("tiled", many))
        }
        ratio = ms["tiled"] / ms["full frame"]
        results[name] = ms | {"ratio": ratio, "faces_at_0.5": found}
        print(
            f"{name:>16}: full frame {ms['full frame']:7.1f} ms, --tiles {args.tiles} {ms['tiled']:7.1f} ms "
            f"({grid.requests} releases): {ratio:.2f}x; "
            f"faces at score >= 0.5: {found['full']} -> {found['tiled']}"
        )
    if args.json is not None:
        atomic_write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
