"""Measure the shipped transforms on the real-scene sets: the numbers quoted in the README.

    python scripts/evaluate_shipped.py [--draws 3] [--out reports/shipped] [--only NAME[,NAME]]

A dataset may name a half, e.g. ``mask-scenes:test`` (the images a transform trained on the other half
never saw). Writes one sweep-style folder per dataset
(table.md, table.csv, sweep.json, accuracy_vs_alpha.png). ``--only`` re-measures the named transforms
(e.g. after one is replaced) and keeps every other row of the existing ``sweep.json`` (clean baseline too).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from veil.faceboxes.data import load_dataset
from veil.faceboxes.shipped import SHIPPED_DIR
from veil.sweep import SweepRow, evaluate_transform, to_markdown, write_report

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("reports/shipped"))
    ap.add_argument("--datasets", default="fddb-sample,widerface-sample,mask-scenes")
    ap.add_argument("--only", default="", help="comma-separated transform names to re-measure")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("VEIL_THREADS", "2")))
    weights = SHARED / "weights/faceboxes/FaceBoxes.pth"
    transforms = sorted(
        (meta.parent for meta in SHIPPED_DIR.glob("*/transform.json")),
        key=lambda p: (p.name.split("-alpha")[0], float(p.name.split("alpha")[1])),
    )
    only = {n for n in args.only.split(",") if n}
    unknown = only - {p.name for p in transforms}
    if unknown:
        raise SystemExit(f"--only: no shipped transform named {', '.join(sorted(unknown))}")
    for spec in args.datasets.split(","):
        name, _, part = spec.partition(":")
        data = load_dataset(SHARED / "data" / name).part(part or "all")
        name = name if not part else f"{name}-{part}"
        kept = _previous(args.out / name / "sweep.json") if only else {}
        rows = [kept.get("") or evaluate_transform(weights, None, data, 1)]
        for path in transforms:
            if path.name in kept and path.name not in only:
                rows.append(kept[path.name])
                continue
            row = evaluate_transform(weights, path, data, args.draws, clean_ap=rows[0].ap)
            row.transform = path.name
            rows.append(row)
        title = (
            f"FaceBoxes.pth on {name} ({len(data.images)} images), pooled AP over {args.draws} noise draws"
        )
        write_report(rows, args.out / name, title, {"dataset": name, "draws": args.draws})
        print(to_markdown(rows, title))


def _previous(path: Path) -> dict[str, SweepRow]:
    """The rows of an earlier run, by transform name ("" for the clean baseline)."""
    if not path.is_file():
        raise SystemExit(f"--only needs an earlier report: {path} not found (run without --only first)")
    rows = [SweepRow(**r) for r in json.loads(path.read_text())["rows"]]
    return {r.transform or "": r for r in rows}


if __name__ == "__main__":
    main()
