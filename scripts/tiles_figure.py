"""What ``--tiles 2`` does, in two pictures: the crowd it finds, and what a crop of a close-up sends.

    python scripts/tiles_figure.py [--out out/tiles-figure] [--overwrite]

The committed pictures are ``reports/tiles-default/``; the script writes elsewhere by default and never
replaces an existing picture without ``--overwrite`` (``--out reports/tiles-default --overwrite``: remake).

``crowd.png``: the WIDER sample's 80-face photo through the default release, full frame (left) and tiled
(right), boxes at score >= 0.5. ``painted.png``: LFW close-ups (top), each as its crops are cut from it after
the release's frame found the face large (middle), and the top-left crop the server receives (bottom).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torchvision.transforms.functional import resize
from torchvision.utils import make_grid

from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.tiles import TileGrid, crops, hide_large_faces, tiled
from veil.imageio import draw_detections, list_images, load_image, save_png

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DEFAULT = Path(__file__).resolve().parents[1] / "src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/tiles-figure"))
    ap.add_argument("--transform", type=Path, default=DEFAULT)
    ap.add_argument("--overwrite", action="store_true", help="replace crowd.png / painted.png if they exist")
    args = ap.parse_args()
    existing = [p for p in (args.out / "crowd.png", args.out / "painted.png") if p.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"error: {existing[0]} exists; pass --overwrite to replace it, or another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    det = load_pipeline(SHARED / "weights/faceboxes/FaceBoxes.pth", args.transform)
    grid, size = TileGrid(tiles=2), det.size or (1024, 1024)
    crowd = load_image(
        next((SHARED / "data/widerface-sample").rglob("12_Group_Group_12_Group_Group_12_217.jpg"))
    )
    sides = []
    for detect in (det.detect, tiled(det.detect, grid, size)):
        boxes = detect([crowd])[0]
        drawn = draw_detections(crowd, boxes[boxes[:, 4] >= 0.5], width=2)
        sides.append(resize(drawn, [drawn.shape[1] * 3 // 4, drawn.shape[2] * 3 // 4], antialias=True))
    save_png(make_grid(sides, nrow=2, padding=8, pad_value=255), args.out / "crowd.png")
    photos = [load_image(p) for p in list_images(SHARED / "data/lfw/test")[:6]]
    painted = [hide_large_faces(p, f, grid, size) for p, f in zip(photos, det.detect(photos), strict=True)]
    sent = [resize(crops(p, grid)[0], [250, 250], antialias=True) for p in painted]
    rows = torch.stack([*photos, *painted, *sent])
    save_png(make_grid(rows, nrow=len(photos), padding=4, pad_value=255), args.out / "painted.png")
    print(f"wrote {args.out / 'crowd.png'} and {args.out / 'painted.png'}")


if __name__ == "__main__":
    main()
