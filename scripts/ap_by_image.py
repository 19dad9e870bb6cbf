"""Which images does a transform's lost AP come from?

    python scripts/ap_by_image.py TRANSFORM [--dataset widerface-sample] [--draws 3]

For each image: its faces and their median height in the original image, the faces found at score > 0.5
clean and under noise (mean over draws), and the AP retained on the set *without* that image (leave one
out). An image whose removal brings retention near 100 % is where the transform costs accuracy; on a
10-image sample one crowded photo can be the whole gap.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from veil.faceboxes.data import load_dataset
from veil.faceboxes.eval.ap import box_iou
from veil.faceboxes.eval.runner import ImagePrediction, pooled_ap, predict
from veil.faceboxes.pipeline import load_pipeline

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _found(p: ImagePrediction, threshold: float = 0.5) -> int:
    dets = p.detections[p.detections[:, 4] > threshold]
    if len(dets) == 0 or len(p.boxes) == 0:
        return 0
    return int((box_iou(dets[:, :4], p.boxes).max(0) > 0.5).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transform", type=Path)
    ap.add_argument("--dataset", default="widerface-sample", help="folder under ../shared/data[:part]")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--top", type=int, default=0, help="only the N images whose removal helps most")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("VEIL_THREADS", "2")))
    weights = SHARED / "weights/faceboxes/FaceBoxes.pth"
    name, _, part = args.dataset.partition(":")
    data = load_dataset(SHARED / "data" / name).part(part or "all")
    clean_det, noisy_det = load_pipeline(weights, None), load_pipeline(weights, args.transform)
    clean = predict(data, clean_det.detect, desc="clean")
    noisy = [predict(data, noisy_det.detect, desc=f"noise draw {d + 1}") for d in range(args.draws)]
    retained = np.mean([pooled_ap(n) for n in noisy]) / pooled_ap(clean)
    print(f"{args.dataset}: AP retained {100 * retained:.1f} % (mean of {args.draws} draws)")
    print("| image | faces | median face height (px) | found clean | found noisy | retained without it |")
    print("|---|---|---|---|---|---|")
    rows = []
    for i, c in enumerate(clean):
        drop = [p for j, p in enumerate(clean) if j != i]
        kept = np.mean([pooled_ap([p for j, p in enumerate(n) if j != i]) for n in noisy]) / pooled_ap(drop)
        heights = c.boxes[:, 3] - c.boxes[:, 1] if len(c.boxes) else np.zeros(1)
        found = np.mean([_found(n[i]) for n in noisy])
        rows.append((kept, c, heights, found))
    if args.top:
        rows = sorted(rows, key=lambda r: -r[0])[: args.top]
    for kept, c, heights, found in rows:
        print(
            f"| {c.name} | {len(c.boxes)} | {np.median(heights):.0f} | {_found(c)} | {found:.1f} | "
            f"{100 * kept:.1f} % |"
        )


if __name__ == "__main__":
    main()
