"""One point of the privacy-utility frontier per transform: AP retained and the full-budget attacker.

    python scripts/frontier_point.py DIR [DIR ...] [--draws 3] [--attack] [--out reports/frontier]

AP retained (mean of ``--draws`` noise draws) on the street scenes' held-out half, the FDDB sample and the
WIDER sample; with ``--attack``, the audit's K = 1 reconstruction attacker at its default budget (1,500
steps at the transform's own input size) trained on ``lfw/attack`` and scored on ``lfw/test`` — the
"SSIM K=1" column of docs/privacy.md's frontier tables, without the rest of ``veil audit`` (K = 4/16,
linkage, clean baselines). ``--tiles K`` measures the tiled pipeline (``veil.faceboxes.tiles``) instead:
AP with
``K x K`` crops plus the full frame (clean AP measured the same way), and the attacker on what it sends
for crop ``--tile-index I`` of each photo (cut, as the client does, after the faces the release's own
frame detections found large were painted over; zoomed to the input size; the target is the unpainted crop).
``--clean`` attacks the clean activation at the transform's split (the attack's ceiling). ``--crowd N``
attacks one face of a crowd instead: each photo in cell (``--cell``, ``--cell``) of an N x N mosaic of
others, the frame (or with ``--tiles``, the crop the client sends) released, the photo the target.
Attack results are kept by the transform's release digest in
``OUT/attacks.json``: a transform that releases exactly what an audited one does (``veil tune-tail``)
reuses its number instead of training a new attacker.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import trange

from veil.artifact import load_transform, release_digest
from veil.audit import AttackConfig, NoiseSpec, score, train_attacker
from veil.audit.attack import ImageSet, head_activations, resize_uint8
from veil.audit.metrics import ssim, to_unit
from veil.faceboxes.data import load_dataset
from veil.faceboxes.detect import Detector
from veil.faceboxes.pipeline import load_pipeline, transform_head
from veil.faceboxes.registry import create_model, split_model
from veil.faceboxes.tiles import TileGrid, crops, hide_large_faces
from veil.imageio import atomic_write_bytes, list_images, load_image
from veil.sweep import evaluate_transform

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SETS = ("mask-scenes:test", "fddb-sample", "widerface-sample")
PAINTED: dict[str, float] = {}  # share of each LFW folder's attacked faces painted over (tiles)


def ap_retained(
    weights: Path,
    transform: Path,
    draws: int,
    clean: dict[str, float],
    tiles: int = 1,
    overlap: float = TileGrid.overlap,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in SETS:
        name, _, part = spec.partition(":")
        data = load_dataset(SHARED / "data" / name).part(part or "all")
        if spec not in clean:
            clean[spec] = evaluate_transform(weights, None, data, 1, tiles=tiles, overlap=overlap).ap
        row = evaluate_transform(
            weights, transform, data, draws, clean_ap=clean[spec], tiles=tiles, overlap=overlap
        )
        out[spec] = {"ap": row.ap, "ap_std": row.ap_std, "retained": row.retained, "snr_db": row.snr_db}
    return out


def as_sent(
    images: list[Tensor],
    grid: TileGrid,
    index: int,
    detector: Detector | None,
    centres: list[tuple[int, int]],
) -> tuple[list[Tensor], int]:
    """Crop ``index`` of each image as the tiled client sends it (painted over from ``detector``'s frame
    boxes; None: unpainted), and how many had the attacked face's ``centres`` (y, x) painted."""
    painted = 0
    if detector is not None and grid.hide_score is not None:
        size = detector.size or (1024, 1024)
        sent = [
            hide_large_faces(m, f, grid, size) for m, f in zip(images, detector.detect(images), strict=True)
        ]
        for (y, x), m, b in zip(centres, sent, images, strict=True):
            painted += bool((m[:, y - 2 : y + 2, x - 2 : x + 2] != b[:, y - 2 : y + 2, x - 2 : x + 2]).any())
        images = sent
    return [crops(m, grid)[index] for m in images], painted


def photos(
    folder: str,
    output_size: int,
    tile: tuple[int, int] | None,
    overlap: float = TileGrid.overlap,
    detector: Detector | None = None,
) -> ImageSet:
    """LFW photos, or (``tile`` = (tiles, index)) crop ``index`` of each as the tiled pipeline cuts it.

    ``detector``: the frame detections that paint large faces over before cutting (None: unpainted).
    """
    paths = list_images(SHARED / "data/lfw" / folder)
    if tile is None:
        return ImageSet.load(paths, output_size, folder)
    grid = TileGrid(tiles=tile[0], overlap=overlap)
    originals = [load_image(p) for p in paths]
    images, painted = [], 0
    for start in trange(0, len(originals), 8, desc=f"{folder} crops"):
        batch = originals[start : start + 8]
        centres = [(m.shape[1] // 2, m.shape[2] // 2) for m in batch]  # LFW: the face's centre
        cut, hits = as_sent(batch, grid, tile[1], detector, centres)
        images.extend(cut)
        painted += hits
    PAINTED[folder] = painted / len(paths)
    targets = torch.stack([resize_uint8(crops(img, grid)[tile[1]], output_size) for img in originals])
    return ImageSet(f"{folder} crop {tile[1]}", paths, images, targets)


def crowds(
    folder: str,
    output_size: int,
    n: int,
    cell: int,
    tile: tuple[int, int] | None,
    overlap: float = TileGrid.overlap,
    detector: Detector | None = None,
) -> ImageSet:
    """A crowd per LFW photo: ``n x n`` photos at 1024 / n px each (faces about 0.45 of that), the photo
    itself in cell (``cell``, ``cell``), the others drawn from the same folder; the target is that photo.

    With ``tile``: what the tiled client sends for that crop of the crowd (painted as it would be).
    """
    paths = list_images(SHARED / "data/lfw" / folder)
    side = 1024 // n
    small = [resize_uint8(load_image(p), side) for p in paths]
    gen = torch.Generator().manual_seed(len(paths))
    grid = TileGrid(tiles=tile[0], overlap=overlap) if tile else None
    centre = cell * side + side // 2
    images, painted = [], 0
    for start in trange(0, len(small), 8, desc=f"{folder} crowds"):
        batch = []
        for i in range(start, min(start + 8, len(small))):
            pick = torch.randint(len(small), (n * n,), generator=gen).tolist()
            pick[cell * n + cell] = i
            rows = [torch.cat([small[k] for k in pick[r * n : (r + 1) * n]], 2) for r in range(n)]
            batch.append(torch.cat(rows, 1))
        if grid is not None and tile is not None:
            batch, hits = as_sent(batch, grid, tile[1], detector, [(centre, centre)] * len(batch))
            painted += hits
        images.extend(batch)
    if tile is not None:
        PAINTED[folder] = painted / len(paths)
    targets = torch.stack([resize_uint8(load_image(p), output_size) for p in paths])
    name = f"{folder} {n}x{n} crowds" + (f", crop {tile[1]}" if tile else "")
    return ImageSet(name, paths, images, targets)


def attack(
    weights: Path,
    transform: Path,
    steps: int,
    seed: int,
    size: int = 0,
    device: str = "cpu",
    tile: tuple[int, int] | None = None,
    clean: bool = False,
    overlap: float = TileGrid.overlap,
    crowd: tuple[int, int] | None = None,
) -> dict[str, Any]:
    tr = load_transform(transform, weights)
    size = size or int(tr.meta["input_size"][0])
    cfg = AttackConfig(steps=steps, seed=seed, input_size=size, device=device)
    if clean:
        head = split_model(create_model("faceboxes", weights), tr.split)[0].eval()
    else:
        head = transform_head(weights, tr)
    frames = None if tile is None else load_pipeline(weights, None if clean else transform)
    if crowd is None:
        aux = photos("attack", cfg.output_size, tile, overlap, frames)
        test = photos("test", cfg.output_size, tile, overlap, frames)
    else:
        aux = crowds("attack", cfg.output_size, *crowd, tile, overlap, frames)
        test = crowds("test", cfg.output_size, *crowd, tile, overlap, frames)
    a = head_activations(head, aux.images, cfg.input_size, desc="aux activations", device=device)
    e = head_activations(head, test.images, cfg.input_size, desc="test activations", device=device)
    spec = None if clean else NoiseSpec.of(tr.noise, a.shape[1:])
    attacker = train_attacker(a, aux.targets, aux.paths, spec, cfg, f"attack {transform.name}")
    s, p = score(attacker, e, test.targets, k=1, seed=cfg.seed + 101)
    mean = to_unit(aux.targets).mean(0, keepdim=True)
    floor = float(ssim(mean.expand_as(to_unit(test.targets)), to_unit(test.targets)).mean())
    return {
        "ssim": float(s.mean()),
        "psnr": float(p.mean()),
        "floor": floor,
        "converged": attacker.converged,
        "plateau_gain": attacker.plateau_gain,
        "steps": steps,
        "input_size": cfg.input_size,
        "painted": dict(PAINTED) if tile is not None else None,
        "crowd": crowd,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transforms", nargs="+", type=Path)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--attack", action="store_true", help="also train the K = 1 full-budget attacker")
    ap.add_argument("--no-ap", action="store_true", help="skip the AP measurement")
    ap.add_argument("--steps", type=int, default=AttackConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--size", type=int, default=0, help="attack at this input size (0: the transform's own; else a proxy)"
    )
    ap.add_argument("--device", default="cpu", help="where the attacker trains (cpu or cuda)")
    ap.add_argument(
        "--tiles",
        type=int,
        default=1,
        help="the tiled pipeline (veil.faceboxes.tiles): its AP, its crops attacked",
    )
    ap.add_argument("--overlap", type=float, default=TileGrid.overlap, help="the tiles' overlap")
    ap.add_argument("--tile-index", type=int, default=0, help="which crop (rows outer; 0: top left)")
    ap.add_argument("--clean", action="store_true", help="attack the clean activation (the ceiling)")
    ap.add_argument(
        "--crowd", type=int, default=0, help="attack one face of N x N LFW crowds (0: single photos)"
    )
    ap.add_argument("--cell", type=int, default=2, help="--crowd: the attacked face's row and column")
    ap.add_argument("--out", type=Path, default=Path("reports/frontier"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("VEIL_THREADS", "2")))
    weights = SHARED / "weights/faceboxes/FaceBoxes.pth"
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "attacks.json"
    attacks: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    clean: dict[str, float] = {}
    for path in args.transforms:
        digest = release_digest(load_transform(path, weights))
        row: dict[str, Any] = {"transform": str(path), "release_sha256": digest}
        if not args.no_ap:
            row["ap"] = ap_retained(weights, path, args.draws, clean, args.tiles, args.overlap)
            row["tiles"], row["overlap"] = args.tiles, args.overlap
        if args.attack:
            key = ("clean:" if args.clean else "") + f"{digest}:{args.steps}:{args.seed}"
            key += f":{args.size}" if args.size else ""
            tile = (args.tiles, args.tile_index) if args.tiles > 1 else None
            key += f":tile{args.tiles}.{args.tile_index}@{args.overlap:g}" if tile else ""
            key += (
                f":hide{TileGrid.hide_score:g}+{TileGrid.hide_margin:g}"
                if tile and TileGrid.hide_score
                else ""
            )
            crowd = (args.crowd, args.cell) if args.crowd else None
            key += f":crowd{args.crowd}c{args.cell}" if crowd else ""
            if key not in attacks:
                t0 = time.perf_counter()
                how = (args.size, args.device, tile, args.clean, args.overlap, crowd)
                found = attack(weights, path, args.steps, args.seed, *how)
                found["device"] = args.device
                found["seconds"] = round(time.perf_counter() - t0, 1)
                attacks[key] = found | {"first_seen": str(path)}
                atomic_write_bytes(store, (json.dumps(attacks, indent=2) + "\n").encode())
            row["attack"] = attacks[key]
        name = path.name
        atomic_write_bytes(args.out / f"{name}.json", (json.dumps(row, indent=2) + "\n").encode())
        cells = [f"{100 * row['ap'][s]['retained']:.1f}" for s in SETS] if "ap" in row else ["–"] * 3
        att = row.get("attack")
        ssim_cell = "–" if att is None else f"{att['ssim']:.3f}{'' if att['converged'] else ' (rising)'}"
        print(f"| {name} | {' / '.join(cells)} % | {ssim_cell} | {digest[:12]} |", flush=True)


if __name__ == "__main__":
    main()
