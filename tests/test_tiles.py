"""Tiled detection: crop geometry, merging, the data path it drives, and what it buys on real crowds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from conftest import run_veil_each
from veil.errors import InputError
from veil.faceboxes.tiles import TileGrid, crops, hide_large_faces, merge, tiled

SHIPPED = Path(__file__).resolve().parents[1] / "src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12"


@pytest.mark.parametrize("tiles", [2, 3, 4])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5])
@pytest.mark.parametrize(("height", "width"), [(678, 1024), (301, 400), (1385, 1024)])
def test_windows_cover_the_image_with_the_asked_overlap(
    tiles: int, overlap: float, height: int, width: int
) -> None:
    grid = TileGrid(tiles=tiles, overlap=overlap)
    windows = grid.windows(height, width)
    assert len(windows) == tiles**2 == grid.requests - 1
    covered = np.zeros((height, width), dtype=int)
    for y0, x0, y1, x1 in windows:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 == pytest.approx(height / grid.zoom, abs=2)  # rounded outwards
        assert x1 - x0 == pytest.approx(width / grid.zoom, abs=2)  # rounded outwards
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1  # nothing falls between crops
    # neighbours share `overlap` of a tile: row 0 and row 1 overlap by that many pixels
    (ay0, _, ay1, _), (by0, _, _, _) = windows[0], windows[tiles]
    assert ay1 - by0 == pytest.approx(overlap * (ay1 - ay0), abs=2.5)
    assert windows[-1][2:] == (height, width)


def test_one_tile_is_the_full_frame_only() -> None:
    grid = TileGrid(tiles=1)
    assert grid.windows(100, 100) == [] and grid.requests == 1

    def detect(images: Sequence[Tensor]) -> list[Tensor]:
        return [torch.zeros(0, 5) for _ in images]

    assert tiled(detect, grid, (1024, 1024)) is detect


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tiles": 0}, "--tiles must be between 1"),
        ({"tiles": 7}, "--tiles must be between 1"),
        ({"hide_score": 1.5}, "hide_score must be a score"),
        ({"hide_margin": -0.1}, "hide_margin must be between 0 and 1"),
        ({"overlap": 0.6}, "overlap must be between 0 and 0.5"),
        ({"max_face": 0}, "max_face must be > 0"),
    ],
)
def test_bad_grids_are_refused_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        TileGrid(**kwargs)
    assert "\n" not in str(err.value)


def test_merge_moves_crop_boxes_home_keeps_small_ones_and_suppresses_duplicates() -> None:
    grid = TileGrid(tiles=2, overlap=0.0, max_face=64)
    # a 512 x 1024 (H x W) image sent at 1024 x 1024: x is kept, y is doubled at the input scale
    windows = grid.windows(512, 1024)
    assert windows == [(0, 0, 256, 512), (0, 512, 256, 1024), (256, 0, 512, 512), (256, 512, 512, 1024)]
    full = torch.tensor([[100.0, 100.0, 300.0, 300.0, 0.9], [600.0, 300.0, 620.0, 320.0, 0.5]])
    parts = [
        torch.tensor([[10.0, 10.0, 30.0, 30.0, 0.8]]),  # 20 x 20 px here, 20 x 40 at the input: kept
        torch.tensor([[0.0, 0.0, 40.0, 40.0, 0.7]]),  # 40 x 80 at the input scale: a full-frame face, dropped
        torch.tensor([[100.0, 0.0, 300.0, 200.0, 0.95]]),  # large: dropped, whatever its score
        torch.tensor([[88.0, 44.0, 108.0, 64.0, 0.6]]),  # the frame's small face, surer in crop 3
    ]
    out = merge((512, 1024), full, parts, grid, (1024, 1024))
    kept = {tuple(round(v, 1) for v in row) for row in out.tolist()}
    want = {
        (100.0, 100.0, 300.0, 300.0, 0.9),
        (10.0, 10.0, 30.0, 30.0, 0.8),
        (600.0, 300.0, 620.0, 320.0, 0.6),
    }
    assert kept == want, kept
    assert torch.equal(out[:, 4], out[:, 4].sort(descending=True).values)  # NMS order: by score


def test_tiled_sends_the_frames_then_their_crops() -> None:
    seen: list[list[Tensor]] = []

    def detect(images: Sequence[Tensor]) -> list[Tensor]:
        seen.append(list(images))
        return [torch.tensor([[1.0, 1.0, 9.0, 9.0, 0.5]]) for _ in images]  # a 8-px face in every crop

    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    image[:, 100:200, 150:250] = torch.arange(100, dtype=torch.uint8).view(1, 100, 1)
    grid = TileGrid(tiles=3, overlap=0.25)
    boxes = tiled(detect, grid, (1024, 1024))([image, image])
    assert len(boxes) == 2 and len(seen) == 2  # one batch of frames, then one of their 2 x 9 crops
    assert [tuple(f.shape) for f in seen[0]] == [(3, 300, 400)] * 2
    assert [torch.equal(c, w) for c, w in zip(seen[1], crops(image, grid) * 2, strict=True)] == [True] * 18
    for (y0, x0, y1, x1), crop in zip(grid.windows(300, 400), crops(image, grid), strict=True):
        assert torch.equal(crop, image[:, y0:y1, x0:x1])
    # every crop's box moved to its own window: ten distinct boxes, none overlapping enough to merge
    want = {(1.0 + x0, 1.0 + y0) for y0, x0, _, _ in grid.windows(300, 400)} | {(1.0, 1.0)}
    assert {(b[0], b[1]) for b in boxes[0][:, :2].tolist()} == want


MEAN_RGB = torch.tensor([123, 117, 104], dtype=torch.uint8).view(3, 1, 1)


def test_crops_never_show_a_face_the_frame_found_large() -> None:
    """Large, confident frame faces (plus a margin) are in the mean colour in every crop; the rest is not."""
    image = torch.randint(
        0, 256, (3, 400, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    grid = TileGrid(tiles=2, max_face=64, hide_score=0.3, hide_margin=0.25)
    frame = torch.tensor(
        [
            [100.0, 100.0, 180.0, 180.0, 0.9],  # 80 px at 400 -> 205 px at the 1024 input: large, hidden
            [300.0, 300.0, 320.0, 320.0, 0.9],  # 51 px at the input: small, a crop's to find
            [300.0, 20.0, 380.0, 100.0, 0.2],  # large but below hide_score: left alone
        ]
    )
    sent: list[Tensor] = []

    def detect(images: Sequence[Tensor]) -> list[Tensor]:
        sent.extend(images)
        return [frame if len(images) == 1 else torch.zeros(0, 5) for _ in images]

    tiled(detect, grid, (1024, 1024))([image])
    painted = torch.zeros(400, 400, dtype=torch.bool)
    painted[80:200, 80:200] = True  # the box with 20 px (0.25 x 80) more on each side
    for (y0, x0, y1, x1), crop in zip(grid.windows(400, 400), sent[1:], strict=True):
        inside = painted[y0:y1, x0:x1]
        assert bool((crop[:, inside] == MEAN_RGB.view(3, 1)).all())
        assert torch.equal(crop[:, ~inside], image[:, y0:y1, x0:x1][:, ~inside])
    assert torch.equal(sent[0], image)  # the frame itself goes as it is
    assert hide_large_faces(image, frame, TileGrid(tiles=2, hide_score=None), (1024, 1024)) is image


def test_the_release_paints_over_real_faces_before_cutting(weights: Path, shared_dir: Path) -> None:
    """LFW close-ups through the shipped release: the frame finds each face large, so no crop shows it."""
    from veil.faceboxes.pipeline import load_pipeline
    from veil.imageio import list_images, load_image

    det = load_pipeline(weights, SHIPPED)
    photos = [load_image(p) for p in list_images(shared_dir / "data/lfw/test")[:6]]
    grid = TileGrid(tiles=2)
    for photo, full in zip(photos, det.detect(photos), strict=True):
        painted = hide_large_faces(photo, full, grid, det.size)
        assert painted is not photo
        centre = painted[:, 110:140, 110:140]  # LFW photos are 250 x 250, the face centred
        assert bool((centre == MEAN_RGB).all())
        for crop in crops(painted, grid):  # each crop holds part of the painted face, none of it shown
            assert float((crop == MEAN_RGB).all(0).float().mean()) > 0.2


@pytest.mark.slow
def test_tiles_find_the_crowd_the_private_default_loses(weights: Path, widerface_sample: Path) -> None:
    """On WIDER's crowd photos the default release drops sub-anchor faces; tiles win them back."""
    from veil.faceboxes.data import load_dataset
    from veil.sweep import evaluate_transform

    data = load_dataset(widerface_sample)
    clean = {k: evaluate_transform(weights, None, data, 1, tiles=k).ap for k in (1, 2)}
    assert clean[2] > clean[1] + 0.05  # the clean model also misses the crowd without tiles
    # draws are OS-entropy noise: margins sized so one unlucky draw (about 1 point) cannot flip them
    noisy = {k: evaluate_transform(weights, SHIPPED, data, 4, clean_ap=clean[k], tiles=k) for k in (1, 2)}
    assert noisy[2].ap > noisy[1].ap + 0.05  # the crowd's 25-px faces, found once enlarged
    assert noisy[2].retained > 0.96  # like for like, the release keeps the tiled crowd (6 draws: 99.1 %)
    assert noisy[2].ap > clean[1]  # and the private pipeline beats the clean untiled one


@pytest.mark.slow
def test_cli_eval_with_tiles(weights: Path, widerface_sample: Path, tmp_path: Path) -> None:
    out, plain = tmp_path / "tiled.json", tmp_path / "plain.json"
    base = ["eval", "--quiet", "-d", str(widerface_sample), "-w", str(weights)]
    bad_cases = (
        (["--tiles", "9"], "--tiles must be between 1"),
        (["--tiles", "2", "--resize", "1"], "--tiles needs a fixed input size"),
    )
    # independent processes, two at a time: the refusals run beside the tiled run, then the plain one
    done, *refusals, plain_run = run_veil_each(
        [*base, "--tiles", "2", "--json", str(out)],
        *([*base, *bad] for bad, _ in bad_cases),
        [*base, "--json", str(plain)],
    )
    assert done.returncode == 0, done.stderr
    tiled_run = json.loads(out.read_text())
    assert tiled_run["meta"]["tiles"] == 2
    assert plain_run.returncode == 0
    assert tiled_run["pooled_ap"] > json.loads(plain.read_text())["pooled_ap"] + 0.05
    for (_, message), refused in zip(bad_cases, refusals, strict=True):
        assert refused.returncode != 0 and message in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_cli_detect_with_tiles_reports_its_threshold(
    weights: Path, widerface_sample: Path, tmp_path: Path
) -> None:
    """``veil detect --tiles 2 --threshold 0.5``: more of the crowd, and still only boxes >= 0.5 reported
    (the frame is read down to hide_score internally, to paint its large faces over)."""
    image = next(widerface_sample.rglob("12_Group_Group_12_Group_Group_12_217.jpg"))
    found = {}
    detect = ["detect", str(image), "-w", str(weights), "--threshold", "0.5"]
    runs = run_veil_each(
        *([*detect, "--tiles", str(k), "--out", str(tmp_path / f"tiles{k}")] for k in (1, 2))
    )
    for tiles, done in zip((1, 2), runs, strict=True):
        assert done.returncode == 0, done.stderr
        found[tiles] = json.loads((tmp_path / f"tiles{tiles}" / f"{image.stem}.json").read_text())["boxes"]
    assert min(b[4] for b in found[2]) >= 0.5
    assert len(found[2]) > len(found[1]) + 15, (len(found[1]), len(found[2]))  # measured: 53 -> 79 of 80
