"""Training samples: mosaic sizes set the face scales a transform is trained for."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.io import write_png

from veil.errors import InputError
from veil.faceboxes.data.images import iter_training_samples, scene_crop
from veil.imageio import list_images, load_image
from veil.training import TrainConfig


def _samples(*args: Any, **kwargs: Any) -> list[torch.Tensor]:
    return list(iter_training_samples(*args, **kwargs))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve flat-coloured 'photos': each mosaic tile then shows one colour."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(12):
        colour = torch.tensor([(37 * i) % 256, (91 * i + 40) % 256, (53 * i + 90) % 256], dtype=torch.uint8)
        write_png(colour[:, None, None].expand(3, 40, 40).contiguous(), str(root / f"p{i:02d}.png"))
    return root


def _tiles_with_content(img: torch.Tensor, k: int) -> int:
    cell = img.shape[-1] // k
    return sum(
        int(img[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].float().sum() > 0)
        for r in range(k)
        for c in range(k)
    )


def test_grids_choose_the_mosaic_size(photos: Path) -> None:
    big = _samples([photos], count=3, size=128, grids=[1])
    small = _samples([photos], count=3, size=128, grids=[8])
    for img in big:  # one photo covering 75-100 % of the canvas
        assert 0.5 < float((img.float().sum(0) > 0).float().mean()) <= 1.0
    for img in small:  # every one of the 8 x 8 cells holds a 12-16 px tile
        assert _tiles_with_content(img, 8) == 64
        colours = {tuple(px) for px in img.flatten(1).T.tolist()} - {(0, 0, 0)}
        assert len(colours) >= 8  # many photos per sample, not one
    assert len({tuple(px) for px in big[0].flatten(1).T.tolist()} - {(0, 0, 0)}) <= 2  # edge blend at most


def test_scene_grids_tile_scene_crops_so_their_faces_shrink(photos: Path) -> None:
    """Scene photos are small, so a crop enlarged to the input only shows large faces; k x k tiles of
    crops show faces k times smaller. (The flat 'photos' serve as scenes: each crop is one colour.)"""
    kw: dict[str, Any] = {"scene_dirs": [photos], "count": 2, "size": 64, "scene_fraction": 1.0, "grids": [2]}
    one = _samples([], seed=4, **kw)
    tiled = _samples([], seed=4, scene_grids=[4], **kw)
    for img in one:
        assert len({tuple(px) for px in img.flatten(1).T.tolist()}) == 1  # one crop fills the canvas
    for img in tiled:
        cells = img.unfold(1, 16, 16).unfold(2, 16, 16)  # 3 x 4 x 4 x 16 x 16
        flat = cells.flatten(3)
        assert bool((flat == flat[..., :1]).all())  # each 16 px cell is one crop
        assert len({tuple(c) for c in flat[..., 0].flatten(1).T.tolist()}) >= 4  # of many scenes
    # [1], the default, draws no grid size: the same crops as before scene grids existed
    rng = random.Random(4)
    scenes = [load_image(f) for f in list_images(photos)]
    before = [scene_crop(scenes[rng.randrange(len(scenes))], 64, rng) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(before, one, strict=True))
    with pytest.raises(InputError, match="--scene-grids must list sizes from 1 to 4"):
        iter_training_samples([], **{**kw, "scene_grids": [8]})


def test_same_seed_same_samples_other_grids_other_samples(photos: Path) -> None:
    a = _samples([photos], count=2, size=64, grids=[2, 4], seed=3)
    b = _samples([photos], count=2, size=64, grids=[2, 4], seed=3)
    c = _samples([photos], count=2, size=64, grids=[1], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_samples_are_made_one_at_a_time_and_match_the_list(photos: Path) -> None:
    """The cache consumes a generator, so thousands of 1024² samples never sit in memory at once."""
    lazy = iter_training_samples([photos], count=4, size=64, grids=[2, 4], seed=5)
    first = next(lazy)  # one sample exists before the rest are drawn
    rest = list(lazy)
    eager = _samples([photos], count=4, size=64, grids=[2, 4], seed=5)
    assert len(rest) == 3
    assert all(torch.equal(x, y) for x, y in zip([first, *rest], eager, strict=True))
    # refused when called, not at the first sample
    with pytest.raises(InputError, match="--mosaic-grids must list sizes"):
        iter_training_samples([photos], count=1, size=64, grids=[5])
    with pytest.raises(InputError, match="no training images"):
        iter_training_samples([], count=1, size=64, grids=[2])


@pytest.mark.parametrize("grids", [[], [0], [5]])
def test_impossible_grids_are_refused(photos: Path, grids: list[int]) -> None:
    with pytest.raises(InputError, match="--mosaic-grids must list sizes"):
        _samples([photos], count=1, size=64, grids=grids)  # 64 px: at most 4 x 4


def test_config_refuses_grids_too_fine_for_the_input(photos: Path) -> None:
    with pytest.raises(InputError, match="--mosaic-grids must list sizes from 1 to 16"):
        TrainConfig(weights="w.pth", images=[str(photos)], alpha=0.1, input_size=256, mosaic_grids=[8, 32])


def test_a_cache_that_cannot_fit_is_refused_with_the_largest_that_would() -> None:
    from veil.training.cache import check_fits

    mib = 1024**2
    check_fits(100, mib, available=400 * mib)  # 200 MiB needed: fits
    with pytest.raises(
        InputError, match=r"--samples 4096 needs about 8\.0 GiB .* use at most --samples 1000"
    ):
        check_fits(4096, mib, available=2000 * mib)


def test_the_cache_consumes_a_generator_and_checks_its_size_after_one_sample() -> None:
    from veil.training.cache import build_cache

    head = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)

    class Tail(torch.nn.Module):  # 10 "anchors": boxes and two-class scores read off the activation
        def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = a.shape[0]
            return a.flatten(1)[:, :40].reshape(n, 10, 4), a.flatten(1)[:, :20].reshape(n, 10, 2)

    tail = Tail()

    made: list[int] = []

    def images() -> Iterator[torch.Tensor]:
        for i in range(3):
            made.append(i)
            yield torch.full((3, 32, 32), 10 * i, dtype=torch.uint8)

    cache = build_cache(head, tail, images(), 32, progress=False, total=3)
    assert cache.activations.shape == (3, 4, 8, 8) and cache.loc.shape == (3, 10, 4)
    assert made == [0, 1, 2]
    made.clear()
    with pytest.raises(InputError, match="--samples 10000000000"):  # refused after the first sample
        build_cache(head, tail, images(), 32, progress=False, total=10**10)
    assert made == [0]
