"""LFW portraits cut the way the mask-compliance classifier's inputs are, for `veil audit`.

    .venv/bin/python scripts/mask_lfw_crops.py --out /tmp/lfw-mask     # writes attack/ and test/ (PNG)

The classifier sees a face box plus a 10 % margin on each side, resized to 64 x 64
(:func:`veil.mask_compliance.data.face_crop`). An LFW deep-funneled portrait (250 x 250) has one centred
face about 110 px wide, so its crop is the centred square of ``--share`` (default 0.55, ~137 px: the face
and that margin) of the portrait, through the same cut and resize. File names keep LFW's
``Person_Name_0001`` stems (the audit's linkage verifier reads identities from them); PNG, so the audit
sees exactly these pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.io import write_png
from tqdm import tqdm

from veil.imageio import list_images, load_image
from veil.mask_compliance.data import INPUT_SIZE, centre_crop

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared/data/lfw")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="attack,test")
    ap.add_argument("--share", type=float, default=0.55, help="side of the crop / side of the portrait")
    ap.add_argument("--size", type=int, default=INPUT_SIZE)
    args = ap.parse_args()
    for part in args.parts.split(","):
        out = args.out / part
        out.mkdir(parents=True, exist_ok=True)
        for path in tqdm(list_images(args.lfw / part), desc=part):
            write_png(centre_crop(load_image(path), args.share, args.size), str(out / f"{path.stem}.png"))
        print(f"{out}: {len(list(out.glob('*.png')))} crops")


if __name__ == "__main__":
    main()
