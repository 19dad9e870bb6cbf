"""Measure the shipped transforms on the real-scene sets: the numbers quoted in the README.

    python scripts/evaluate_shipped.py [--draws 3] [--out reports/shipped]

A dataset may name a half, e.g. ``mask-scenes:test`` (the images a transform trained on the other half
never saw). Writes one sweep-style folder per dataset
(table.md, table.csv, sweep.json, accuracy_vs_alpha.png).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from veil.artifact import SHIPPED_DIR
from veil.data import load_dataset
from veil.sweep import evaluate_transform, to_markdown, write_report

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("reports/shipped"))
    ap.add_argument("--datasets", default="fddb-sample,widerface-sample,mask-scenes")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("VEIL_THREADS", "2")))
    weights = SHARED / "weights/faceboxes/FaceBoxes.pth"
    transforms = sorted(
        (meta.parent for meta in SHIPPED_DIR.glob("*/transform.json")),
        key=lambda p: (p.name.split("-alpha")[0], float(p.name.split("alpha")[1])),
    )
    for spec in args.datasets.split(","):
        name, _, part = spec.partition(":")
        data = load_dataset(SHARED / "data" / name).part(part or "all")
        name = name if not part else f"{name}-{part}"
        rows = [evaluate_transform(weights, None, data, 1)]
        for path in transforms:
            row = evaluate_transform(weights, path, data, args.draws, clean_ap=rows[0].ap)
            row.transform = path.name
            rows.append(row)
        title = (
            f"FaceBoxes.pth on {name} ({len(data.images)} images), pooled AP over {args.draws} noise draws"
        )
        write_report(rows, args.out / name, title, {"dataset": name, "draws": args.draws})
        print(to_markdown(rows, title))


if __name__ == "__main__":
    main()
