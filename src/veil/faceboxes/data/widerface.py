"""WIDER FACE reader: wider_face_{train,val}_bbx_gt.txt -> LabeledDataset (x1,y1,x2,y2 boxes + ignore flags).

Faces flagged ``invalid`` (or with an empty box) are kept but marked ``ignore`` so that evaluation neither
rewards nor penalises detections on them, as in the official protocol.
"""

from __future__ import annotations

import pathlib

import numpy as np

from veil.errors import DatasetError
from veil.faceboxes.data.labels import (
    LabeledDataset,
    LabeledImage,
    check_image_files,
    read_face_count,
    rows_to_array,
)

SPLIT_DIR = "wider_face_split"
SPLITS = ("val", "train")
_FIELDS = "x y w h blur expression illumination invalid occlusion pose"
_NFIELDS = 10
_INVALID = 7


def gt_path(root: pathlib.Path, split: str) -> pathlib.Path:
    """Where the ground-truth file of ``split`` lives under a WIDER FACE root."""
    return root / SPLIT_DIR / f"wider_face_{split}_bbx_gt.txt"


def available_splits(root: str | pathlib.Path) -> list[str]:
    """Splits (val first, then train) whose ground-truth file exists."""
    return [s for s in SPLITS if gt_path(pathlib.Path(root), s).is_file()]


def _is_numeric_line(line: str) -> bool:
    """True for a row of numbers, i.e. the placeholder row that follows a face count of 0."""
    fields = line.split()
    if not fields:
        return False
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def _parse_gt(path: pathlib.Path) -> list[tuple[str, np.ndarray]]:
    """Parse blocks (relative path, count, count × 10 numbers) -> (relative path, raw values [N,10])."""
    if not path.is_file():
        raise DatasetError(f"WIDER FACE ground truth not found: {path}")
    lines = path.read_text().splitlines()
    rows: list[list[str]] = []
    row_lines: list[int] = []
    spans: list[tuple[str, int, int]] = []  # (rel path, first row, end row)
    i = 0
    while i < len(lines):
        rel = lines[i].strip()
        i += 1
        if not rel:
            continue
        path_line = i
        if "/" not in rel or not rel.lower().endswith((".jpg", ".jpeg", ".png")):
            msg = f"expected an image path like 'event/name.jpg', got {rel!r}"
            raise DatasetError(f"{path}:{path_line}: {msg}")
        count_line = i + 1
        count = read_face_count(lines, i, path)
        i += 1
        if count == 0 and i < len(lines) and _is_numeric_line(lines[i]):
            i += 1  # the official files follow a count of 0 with one placeholder row of zeros
        start = len(rows)
        for got in range(count):
            fields = lines[i].split() if i < len(lines) else []
            if len(fields) <= 1:  # end of file, blank line, or the next image's path
                raise DatasetError(
                    f"{path}:{count_line}: {rel!r} declares {count} faces but only {got} box lines follow"
                )
            if len(fields) != _NFIELDS:
                msg = f"expected {_NFIELDS} fields '{_FIELDS}', got {len(fields)}"
                raise DatasetError(f"{path}:{i + 1}: {msg}")
            rows.append(fields)
            row_lines.append(i + 1)
            i += 1
        spans.append((rel, start, len(rows)))
    values = rows_to_array(rows, row_lines, path, _NFIELDS)
    return [(rel, values[s:e]) for rel, s, e in spans]


def xywh_to_xyxy(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows [N,10] -> (boxes x1,y1,x2,y2 [N,4], ignore [N]); empty boxes are ignored like invalid ones."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] <= _INVALID:
        raise DatasetError(f"WIDER rows must have shape [N,{_NFIELDS}] ({_FIELDS}), got {v.shape}")
    x, y, w, h = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
    boxes = np.stack([x, y, x + w, y + h], axis=1)
    ignore = (v[:, _INVALID] != 0) | (w <= 0) | (h <= 0)
    return boxes, ignore


def _load_split(root: pathlib.Path, split: str) -> list[LabeledImage]:
    img_dir = root / f"WIDER_{split}" / "images"
    images = []
    for rel, values in _parse_gt(gt_path(root, split)):
        boxes, ignore = xywh_to_xyxy(values)
        stem = rel.rsplit(".", 1)[0]
        images.append(
            LabeledImage(
                name=stem, path=img_dir / rel, group=rel.split("/", 1)[0], boxes=boxes, ignore=ignore
            )
        )
    return images


def load_widerface(
    root: str | pathlib.Path,
    split: str = "val",
    *,
    skip_missing: bool = False,
    check_images: bool = True,
) -> LabeledDataset:
    """Load WIDER FACE ``split`` ("val", "train", or "all" = every split present, val first).

    Images are expected at ``<root>/WIDER_<split>/images/<event>/<file>.jpg``.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DatasetError(f"WIDER FACE root {root} does not exist or is not a directory")
    if split == "all":
        splits = available_splits(root)
        if not splits:
            raise DatasetError(
                f"no WIDER FACE ground truth under {root}: expected {gt_path(root, 'val')} "
                f"and/or {gt_path(root, 'train')}"
            )
    elif split in SPLITS:
        splits = [split]
    else:
        raise DatasetError(f"unknown WIDER FACE split {split!r}; choose one of: val, train, all")
    images = [img for s in splits for img in _load_split(root, s)]
    where = root / f"WIDER_{splits[0]}" / "images" if len(splits) == 1 else root
    present, absent = check_image_files(
        images, check_images=check_images, skip_missing=skip_missing, where=where
    )
    return LabeledDataset(
        name=f"{root.name or 'widerface'}-{split}",
        images=present,
        missing=[img.name for img in absent],
        missing_groups=[img.group for img in absent],
    )
