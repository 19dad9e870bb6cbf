"""Unlabeled training images and the augmentation that makes them look like scenes.

LFW photos show one centred face each; a detector's noise must keep faces of every size and place.
So training samples are mosaics: a k x k grid of photos (k random), which puts faces of many scales at
many positions, mixed with random crops of real multi-face scenes when some are given.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from veil.errors import InputError
from veil.imageio import list_images, load_image

GRID_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16)  # faces from ~400 px down to ~25 px at 1024^2


def check_grids(grids: Sequence[int], size: int, option: str = "--mosaic-grids") -> None:
    """One-line error for grid sizes that leave tiles under 16 px at ``size`` (or no sizes at all)."""
    if not grids or any(not 1 <= k <= size // 16 for k in grids):
        raise InputError(
            f"{option} must list sizes from 1 to {size // 16}: a k x k grid needs tiles "
            f"of at least 16 px at {size}px, got {list(grids)}"
        )


def _fit(img: Tensor, height: int, width: int) -> Tensor:
    return F.interpolate(
        img[None].float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )[0]


def mosaic(photos: Sequence[Tensor], grid: int, size: int, rng: random.Random) -> Tensor:
    """``grid`` x ``grid`` tiles of random photos (jittered, some flipped) on a size x size canvas."""
    canvas = torch.zeros(3, size, size)
    cell = size // grid
    for r in range(grid):
        for c in range(grid):
            img = photos[rng.randrange(len(photos))]
            scale = rng.uniform(0.75, 1.0)
            h = w = max(8, int(cell * scale))
            tile = _fit(img, h, w)
            if rng.random() < 0.5:
                tile = tile.flip(-1)
            y = r * cell + rng.randrange(cell - h + 1)
            x = c * cell + rng.randrange(cell - w + 1)
            canvas[:, y : y + h, x : x + w] = tile
    return canvas.round().clamp(0, 255).to(torch.uint8)


def scene_crop(img: Tensor, size: int, rng: random.Random) -> Tensor:
    """A random crop (40-100% of the shorter side, some flipped) resized to size x size."""
    _, h, w = img.shape
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
    crop = _fit(img[:, y : y + side, x : x + side], size, size)
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop.round().clamp(0, 255).to(torch.uint8)


def scene_grid(scenes: Sequence[Tensor], grid: int, size: int, rng: random.Random) -> Tensor:
    """``grid`` x ``grid`` crops of random scenes: small scene photos, cropped and enlarged, only ever show
    large faces; tiling them shows the same kind of scene with faces ``grid`` times smaller (crowds)."""
    canvas = torch.zeros(3, size, size, dtype=torch.uint8)
    cell = size // grid
    for r in range(grid):
        for c in range(grid):
            tile = scene_crop(scenes[rng.randrange(len(scenes))], cell, rng)
            canvas[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
    return canvas


def iter_training_samples(
    photo_dirs: Sequence[str | Path],
    scene_dirs: Sequence[str | Path] = (),
    count: int = 256,
    size: int = 1024,
    scene_fraction: float = 0.25,
    seed: int = 0,
    max_photos: int = 2000,
    scene_files: Sequence[str | Path] = (),
    grids: Sequence[int] = GRID_CHOICES,
    scene_grids: Sequence[int] = (1,),
) -> Iterator[Tensor]:
    """``count`` uint8 images (size x size), made one at a time: mosaics of photos, plus crops of scenes.

    ``grids`` are the mosaic sizes drawn from (k x k photos per sample): larger k, smaller faces;
    ``scene_grids`` the same for scene crops (k x k crops per sample).
    Deterministic for a given ``seed`` so a training run can be reproduced exactly. Bad arguments fail
    here, not at the first sample; samples are made lazily because thousands of 1024² images would
    not fit in memory next to the activation cache that consumes them.
    """
    check_grids(grids, size)
    check_grids(scene_grids, size, "--scene-grids")
    grid_choices, scene_choices = list(grids), list(scene_grids)
    rng = random.Random(seed)
    photo_files = [p for d in photo_dirs for p in list_images(d)]
    rng.shuffle(photo_files)
    if not photo_files and not (scene_dirs or scene_files):
        raise InputError("no training images: pass --images, --scenes or --labels")
    photos = [load_image(p) for p in photo_files[:max_photos]]
    scene_paths = [p for d in scene_dirs for p in list_images(d)] + [Path(p) for p in scene_files]
    scenes = [load_image(p) for p in scene_paths]

    def generate() -> Iterator[Tensor]:
        for _ in range(count):
            if scenes and (not photos or rng.random() < scene_fraction):
                # one choice only: no draw, so seeds made before scene grids existed give the same samples
                k = scene_choices[0] if len(scene_choices) == 1 else rng.choice(scene_choices)
                yield scene_grid(scenes, k, size, rng)
            else:
                yield mosaic(photos, rng.choice(grid_choices), size, rng)

    return generate()
