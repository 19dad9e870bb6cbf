"""WIDER FACE reader: per-split counts, xywh -> xyxy against the raw file, zero-count blocks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.errors import DatasetError
from veil.faceboxes.data import LabeledDataset, load_dataset, load_widerface, xywh_to_xyxy


def raw_blocks(gt: Path) -> dict[str, list[list[float]]]:
    """Independent, minimal reading of a ground-truth file: relative path -> raw rows."""
    lines = gt.read_text().splitlines()
    out: dict[str, list[list[float]]] = {}
    i = 0
    while i < len(lines):
        rel, count = lines[i].strip(), int(lines[i + 1])
        rows = lines[i + 2 : i + 2 + count]
        out[rel] = [[float(v) for v in r.split()] for r in rows]
        i += 2 + max(count, 1)
    return out


def write_gt(root: Path, split: str, text: str) -> Path:
    path = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch_image(root: Path, split: str, rel: str) -> None:
    path = root / f"WIDER_{split}" / "images" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xd9")


# --- real data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n_images"), [("val", 4), ("train", 6)])
def test_split_counts_match_file(widerface_sample: Path, split: str, n_images: int) -> None:
    raw = raw_blocks(widerface_sample / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt")
    ds = load_widerface(widerface_sample, split)
    assert len(ds.images) == len(raw) == n_images
    assert ds.num_faces == sum(len(rows) for rows in raw.values())
    assert [img.name + ".jpg" for img in ds.images] == list(raw)
    assert all(img.path.is_file() and img.ellipses is None for img in ds.images)


def test_all_is_val_then_train(widerface_sample: Path) -> None:
    val, train = load_widerface(widerface_sample, "val"), load_widerface(widerface_sample, "train")
    both = load_widerface(widerface_sample, "all")
    assert [i.name for i in both.images] == [i.name for i in val.images + train.images]
    assert (len(both.images), both.num_faces) == (10, 249)
    auto = load_dataset(widerface_sample)
    assert [i.name for i in auto.images] == [i.name for i in both.images]
    assert auto.groups[:3] == ["0--Parade", "9--Press_Conference", "12--Group"]


def test_box_conversion_against_raw_line(widerface_sample: Path) -> None:
    gt = widerface_sample / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    lines = gt.read_text().splitlines()
    at = lines.index("0--Parade/0_Parade_marchingband_1_849.jpg")
    x, y, w, h = (float(v) for v in lines[at + 2].split()[:4])
    assert (x, y, w, h) == (449, 330, 122, 149)
    ds = load_widerface(widerface_sample, "train")
    img = next(i for i in ds.images if i.name == "0--Parade/0_Parade_marchingband_1_849")
    assert img.group == "0--Parade"
    assert img.path == widerface_sample / "WIDER_train/images/0--Parade/0_Parade_marchingband_1_849.jpg"
    np.testing.assert_array_equal(img.boxes, [[x, y, x + w, y + h]])
    assert img.ignore is not None and img.ignore.tolist() == [False]


def test_ignore_follows_invalid_flag(widerface_sample: Path) -> None:
    raw = raw_blocks(widerface_sample / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    ds = load_widerface(widerface_sample, "val")
    for img in ds.images:
        rows = np.array(raw[img.name + ".jpg"])
        assert img.ignore is not None
        np.testing.assert_array_equal(img.ignore, rows[:, 7] == 1)
        np.testing.assert_array_equal(img.boxes[:, 2:] - img.boxes[:, :2], rows[:, 2:4])
    assert int(ds.images[0].ignore.sum()) == 75  # type: ignore[union-attr]


def test_shards_union_is_whole(widerface_sample: Path) -> None:
    ds = load_widerface(widerface_sample, "all")
    shards = [ds.shard(i, 3) for i in range(3)]
    assert sorted(g for s in shards for g in s.groups) == sorted(ds.groups)
    assert sum(len(s.images) for s in shards) == len(ds.images)
    merged = LabeledDataset(ds.name, [img for s in shards for img in s.images], [])
    assert {id(i) for i in merged.images} == {id(i) for i in ds.images}
    assert ds.select(["12--Group"]).num_faces == 85


# --- synthetic files --------------------------------------------------------------------------------------

ZEROS = "0 0 0 0 0 0 0 0 0 0"


def test_zero_count_skips_placeholder_row(tmp_path: Path) -> None:
    write_gt(
        tmp_path, "val", f"1--A/a.jpg\n0\n{ZEROS}\n2--B/b.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n5 6 0 4 0 0 0 0 0 0\n"
    )
    ds = load_widerface(tmp_path, "val", check_images=False)
    assert [i.name for i in ds.images] == ["1--A/a", "2--B/b"]
    empty, full = ds.images
    assert empty.boxes.shape == (0, 4) and empty.ignore is not None and empty.ignore.shape == (0,)
    np.testing.assert_array_equal(full.boxes, [[1, 2, 4, 6], [5, 6, 5, 10]])
    assert full.ignore is not None and full.ignore.tolist() == [False, True]  # w == 0 is ignored


def test_zero_count_at_end_without_placeholder(tmp_path: Path) -> None:
    write_gt(tmp_path, "val", "1--A/a.jpg\n1\n1 2 3 4 0 0 0 1 0 0\n2--B/b.jpg\n0\n")
    ds = load_widerface(tmp_path, "val", check_images=False)
    assert [i.num_faces for i in ds.images] == [1, 0]
    assert ds.images[0].ignore is not None and ds.images[0].ignore.tolist() == [True]


def test_xywh_to_xyxy_vectorised() -> None:
    boxes, ignore = xywh_to_xyxy(
        np.array([[10, 20, 30, 40, 0, 0, 0, 0, 0, 0], [1, 1, 5, -1, 0, 0, 0, 0, 0, 0]])
    )
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 60], [1, 1, 6, 0]])
    assert ignore.tolist() == [False, True]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("1--A/a.jpg\nx\n", 2, "face count"),
        ("1--A/a.jpg\n1\n1 2 3 4 0 0\n", 3, "expected 10 fields"),
        ("1--A/a.jpg\n1\n1 2 3 q 0 0 0 0 0 0\n", 3, "not a number: 'q'"),
        ("1--A/a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n2--B/b.jpg\n0\n", 2, "declares 3 faces but only 1"),
        ("1--A/a.jpg\n0\n\nnot-a-path\n", 4, "expected an image path"),
        ("1--A/a.jpg\n-1\n", 2, ">= 0"),
    ],
)
def test_malformed_gt(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = write_gt(tmp_path, "val", text)
    with pytest.raises(DatasetError) as info:
        load_widerface(tmp_path, "val", check_images=False)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert what in msg and "\n" not in msg


def test_missing_images(tmp_path: Path) -> None:
    rels = [f"1--A/{c}.jpg" for c in "abcd"]
    write_gt(tmp_path, "val", "".join(f"{r}\n1\n1 2 3 4 0 0 0 0 0 0\n" for r in rels))
    touch_image(tmp_path, "val", rels[2])
    with pytest.raises(DatasetError, match=r"3 of 4 images are missing.*--skip-missing"):
        load_widerface(tmp_path, "val")
    ds = load_widerface(tmp_path, "val", skip_missing=True)
    assert [i.name for i in ds.images] == ["1--A/c"]
    assert ds.missing == ["1--A/a", "1--A/b", "1--A/d"]


def test_split_selection_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_widerface(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no WIDER FACE ground truth"):
        load_widerface(tmp_path, "all")
    write_gt(tmp_path, "val", "1--A/a.jpg\n0\n")
    with pytest.raises(DatasetError, match="unknown WIDER FACE split 'test'"):
        load_widerface(tmp_path, "test")
    with pytest.raises(DatasetError, match=r"wider_face_train_bbx_gt\.txt"):
        load_widerface(tmp_path, "train", check_images=False)
    assert len(load_widerface(tmp_path, "all", check_images=False).images) == 1


def test_load_dataset_detection(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"FDDB-folds/.*wider_face_split/"):
        load_dataset(tmp_path)
    write_gt(tmp_path, "train", "1--A/a.jpg\n0\n")
    ds = load_dataset(tmp_path, check_images=False)
    assert ds.name.endswith("-all") and len(ds.images) == 1
    with pytest.raises(DatasetError, match="FDDB only"):
        load_dataset(tmp_path, folds=[1], check_images=False)
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        load_dataset(tmp_path, kind="coco")
