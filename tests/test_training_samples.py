"""Training samples: mosaic sizes set the face scales a transform is trained for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from veil.data.images import training_samples
from veil.errors import InputError
from veil.train import TrainConfig


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
    big = training_samples([photos], count=3, size=128, grids=[1])
    small = training_samples([photos], count=3, size=128, grids=[8])
    for img in big:  # one photo covering 75-100 % of the canvas
        assert 0.5 < float((img.float().sum(0) > 0).float().mean()) <= 1.0
    for img in small:  # every one of the 8 x 8 cells holds a 12-16 px tile
        assert _tiles_with_content(img, 8) == 64
        colours = {tuple(px) for px in img.flatten(1).T.tolist()} - {(0, 0, 0)}
        assert len(colours) >= 8  # many photos per sample, not one
    assert len({tuple(px) for px in big[0].flatten(1).T.tolist()} - {(0, 0, 0)}) <= 2  # edge blend at most


def test_same_seed_same_samples_other_grids_other_samples(photos: Path) -> None:
    a = training_samples([photos], count=2, size=64, grids=[2, 4], seed=3)
    b = training_samples([photos], count=2, size=64, grids=[2, 4], seed=3)
    c = training_samples([photos], count=2, size=64, grids=[1], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("grids", [[], [0], [5]])
def test_impossible_grids_are_refused(photos: Path, grids: list[int]) -> None:
    with pytest.raises(InputError, match="mosaic grids"):
        training_samples([photos], count=1, size=64, grids=grids)  # 64 px: at most 4 x 4


def test_config_refuses_grids_too_fine_for_the_input(photos: Path) -> None:
    with pytest.raises(InputError, match="--mosaic-grids must list sizes from 1 to 16"):
        TrainConfig(weights="w.pth", images=[str(photos)], alpha=0.1, input_size=256, mosaic_grids=[8, 32])
