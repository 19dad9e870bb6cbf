"""FDDB reader: official fold counts, exact ellipse rectangles, file:line errors, missing images, sharding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from veil.errors import DatasetError
from veil.faceboxes.data import LabeledDataset, ellipses_to_boxes, load_dataset, load_fddb


def write_fold(root: Path, fold: int, names: list[str], ellipse_text: str) -> Path:
    """Write an FDDB-folds/ pair for one fold; returns the ellipse-list path."""
    folds = root / "FDDB-folds"
    folds.mkdir(parents=True, exist_ok=True)
    (folds / f"FDDB-fold-{fold:02d}.txt").write_text("".join(f"{n}\n" for n in names))
    path = folds / f"FDDB-fold-{fold:02d}-ellipseList.txt"
    path.write_text(ellipse_text)
    return path


def touch_image(root: Path, name: str) -> None:
    path = root / "originalPics" / f"{name}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xd9")


# --- real data -------------------------------------------------------------------------------------------


def test_official_folds_counts(fddb_folds: Path) -> None:
    ds = load_fddb(fddb_folds, check_images=False)
    assert len(ds.images) == 2845
    assert ds.num_faces == 5171
    assert ds.groups == [str(i) for i in range(1, 11)]
    assert ds.missing == []
    assert ds.images[0].name == "2002/08/11/big/img_591"
    assert all(img.ellipses is not None and img.ignore is None for img in ds.images)


def test_official_folds_dir_given_directly(fddb_folds: Path) -> None:
    ds = load_fddb(fddb_folds / "FDDB-folds", folds=[2, 10], check_images=False)
    assert ds.groups == ["2", "10"]
    assert len(ds.by_group()["2"]) == 285
    assert len(ds.by_group()["10"]) == 280


def test_sample_loads_with_images(fddb_sample: Path) -> None:
    ds = load_fddb(fddb_sample)
    assert (len(ds.images), ds.num_faces) == (7, 11)
    assert ds.groups == ["1", "6"]
    assert {g: len(v) for g, v in ds.by_group().items()} == {"1": 1, "6": 6}
    assert all(img.path.is_file() for img in ds.images)
    first = ds.images[0]
    assert first.name == "2002/08/11/big/img_591" and first.group == "1"
    assert first.boxes.dtype == np.float64 and first.boxes.shape == (1, 4)
    a, b, t, cx, cy = 123.5833, 85.5495, 1.265839, 269.6934, 161.7812
    hw = math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)
    hh = math.sqrt((a * math.sin(t)) ** 2 + (b * math.cos(t)) ** 2)
    np.testing.assert_allclose(first.boxes[0], [cx - hw, cy - hh, cx + hw, cy + hh], rtol=1e-12)
    assert load_dataset(fddb_sample).num_faces == 11
    assert load_fddb(fddb_sample / "FDDB-folds").images[3].path.is_file()


def test_sample_fold_selection(fddb_sample: Path) -> None:
    ds = load_fddb(fddb_sample, folds=[6])
    assert ds.groups == ["6"] and len(ds.images) == 6


def test_images_are_immutable(fddb_sample: Path) -> None:
    img = load_fddb(fddb_sample).images[0]
    with pytest.raises(ValueError):
        img.boxes[0, 0] = 0.0
    with pytest.raises(AttributeError):
        img.name = "x"  # type: ignore[misc]


# --- ellipse -> rectangle ----------------------------------------------------------------------------------


def test_rotated_ellipse_box_matches_dense_sampling() -> None:
    rng = np.random.default_rng(0)
    n = 20
    a = rng.uniform(5, 200, n)
    b = a * rng.uniform(0.2, 1.0, n)
    theta = rng.uniform(-math.pi, math.pi, n)
    centre = rng.uniform(-50, 500, (n, 2))
    ell = np.column_stack([a, b, theta, centre])
    boxes = ellipses_to_boxes(ell)
    t = np.linspace(0, 2 * math.pi, 400_001)[None, :]
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x = centre[:, :1] + a[:, None] * np.cos(t) * c - b[:, None] * np.sin(t) * s
    y = centre[:, 1:] + a[:, None] * np.cos(t) * s + b[:, None] * np.sin(t) * c
    sampled = np.column_stack([x.min(1), y.min(1), x.max(1), y.max(1)])
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    sampled_half = (sampled[:, 2:] - sampled[:, :2]) / 2
    np.testing.assert_allclose(half, sampled_half, rtol=1e-6)
    np.testing.assert_allclose(boxes, sampled, rtol=1e-6, atol=1e-6 * a.max())
    assert (half >= sampled_half - 1e-9).all()  # exact box contains every sampled boundary point


def test_axis_aligned_ellipses_exact() -> None:
    ell = np.array([[30.0, 20.0, 0.0, 100.0, 50.0], [30.0, 20.0, math.pi / 2, 100.0, 50.0]])
    boxes = ellipses_to_boxes(ell)
    np.testing.assert_array_equal(boxes[0], [70.0, 30.0, 130.0, 70.0])
    np.testing.assert_array_equal(boxes[1], [80.0, 20.0, 120.0, 80.0])


def test_ellipses_to_boxes_shapes() -> None:
    assert ellipses_to_boxes(np.zeros((0, 5))).shape == (0, 4)
    with pytest.raises(DatasetError, match=r"\[N,5\]"):
        ellipses_to_boxes(np.zeros((2, 4)))


# --- malformed annotations --------------------------------------------------------------------------------

GOOD = "1.0 1.0 0.0 5.0 5.0  1"


@pytest.mark.parametrize(
    ("names", "text", "line", "what"),
    [
        (["a"], f"a\n2\n{GOOD}\n1.0 x 0.0 5.0 5.0 1\n", 4, "not a number: 'x'"),
        (["a"], "a\n1\n1.0 2.0 3.0\n", 3, "expected 6 fields"),
        (["a"], f"a\none\n{GOOD}\n", 2, "face count"),
        (["a", "b"], f"a\n3\n{GOOD}\nb\n1\n{GOOD}\n", 2, "declares 3 faces but only 1"),
        (["a"], f"a\n2\n{GOOD}\n", 2, "declares 2 faces but only 1"),
        (["a", "b"], f"a\n1\n{GOOD}\nc\n1\n{GOOD}\n", 4, "'c' does not match"),
        (["a"], f"a\n1\n{GOOD}\nb\n1\n{GOOD}\n", 4, "'b' is not in"),
        (["a", "b"], f"a\n1\n{GOOD}\n", 3, "file ends after 1 images"),
        (["a"], "a\n1\n-1.0 1.0 0.0 5.0 5.0 1\n", 3, "radii"),
        (["a"], "a\n1\n1.0 nan 0.0 5.0 5.0 1\n", 3, "finite"),
    ],
)
def test_malformed_ellipse_list(tmp_path: Path, names: list[str], text: str, line: int, what: str) -> None:
    path = write_fold(tmp_path, 1, names, text)
    with pytest.raises(DatasetError) as info:
        load_fddb(tmp_path, check_images=False)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert what in msg
    assert "\n" not in msg


def test_missing_fold_file_names_expected_path(tmp_path: Path) -> None:
    write_fold(tmp_path, 1, ["a"], f"a\n1\n{GOOD}\n")
    with pytest.raises(DatasetError, match=r"FDDB-folds/FDDB-fold-03\.txt"):
        load_fddb(tmp_path, folds=[3], check_images=False)
    (tmp_path / "FDDB-folds" / "FDDB-fold-01-ellipseList.txt").unlink()
    with pytest.raises(DatasetError, match=r"FDDB-fold-01-ellipseList\.txt"):
        load_fddb(tmp_path, check_images=False)


def test_not_an_fddb_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="FDDB-folds"):
        load_fddb(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_fddb(tmp_path / "nope")


# --- missing images ---------------------------------------------------------------------------------------


def _partial_root(tmp_path: Path) -> Path:
    names = [f"2002/img_{i}" for i in range(5)]
    write_fold(tmp_path, 1, names[:3], "".join(f"{n}\n1\n{GOOD}\n" for n in names[:3]))
    write_fold(tmp_path, 2, names[3:], "".join(f"{n}\n0\n" for n in names[3:]))
    touch_image(tmp_path, names[1])
    return tmp_path


def test_missing_images_raise_with_count_and_hint(tmp_path: Path) -> None:
    root = _partial_root(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_fddb(root)
    msg = str(info.value)
    assert "4 of 5 images are missing" in msg
    assert "--skip-missing" in msg and "\n" not in msg
    for name in ("img_0", "img_2", "img_3"):
        assert str(root / "originalPics" / "2002" / f"{name}.jpg") in msg
    assert "img_4" not in msg  # only the first three paths are shown


def test_skip_missing_reports_them(tmp_path: Path) -> None:
    ds = load_fddb(_partial_root(tmp_path), skip_missing=True)
    assert [img.name for img in ds.images] == ["2002/img_1"]
    assert ds.missing == ["2002/img_0", "2002/img_2", "2002/img_3", "2002/img_4"]
    assert ds.groups == ["1", "2"]
    assert ds.shard(1, 2).missing == ["2002/img_3", "2002/img_4"]
    assert load_fddb(tmp_path, check_images=False).num_faces == 3


def test_no_images_at_all_is_an_error_even_when_skipping(fddb_folds: Path) -> None:
    with pytest.raises(DatasetError, match="check_images=False"):
        load_fddb(fddb_folds, skip_missing=True)


# --- groups and shards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [1, 3, 4, 10, 13])
def test_shards_partition_groups(fddb_folds: Path, num_shards: int) -> None:
    ds = load_fddb(fddb_folds, check_images=False)
    shards = [ds.shard(i, num_shards) for i in range(num_shards)]
    groups = [g for s in shards for g in s.groups]
    assert sorted(groups, key=int) == ds.groups and len(set(groups)) == len(groups)
    for i, s in enumerate(shards):
        assert s.groups == [g for j, g in enumerate(ds.groups) if j % num_shards == i]
    merged = LabeledDataset(ds.name, [img for s in shards for img in s.images], [])
    by_group = merged.by_group()
    assert [img.name for g in ds.groups for img in by_group[g]] == [img.name for img in ds.images]
    assert sum(s.num_faces for s in shards) == ds.num_faces


def test_shard_and_select_errors(fddb_sample: Path) -> None:
    ds = load_fddb(fddb_sample)
    with pytest.raises(DatasetError, match="out of range"):
        ds.shard(2, 2)
    with pytest.raises(DatasetError, match="out of range"):
        ds.shard(0, 0)
    assert ds.select([6]).groups == ["6"]
    with pytest.raises(DatasetError, match="available: 1, 6"):
        ds.select(["3"])
