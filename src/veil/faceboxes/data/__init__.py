"""Face-detection ground truth (FDDB, WIDER FACE) as one dataset type, with auto-detection of the layout."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from veil.errors import DatasetError
from veil.faceboxes.data.fddb import FOLDS_DIR, ellipses_to_boxes, load_fddb
from veil.faceboxes.data.labels import LabeledDataset, LabeledImage, group_sort_key
from veil.faceboxes.data.widerface import SPLIT_DIR, load_widerface, xywh_to_xyxy

__all__ = [
    "LabeledDataset",
    "LabeledImage",
    "detect_kind",
    "ellipses_to_boxes",
    "group_sort_key",
    "load_dataset",
    "load_fddb",
    "load_widerface",
    "xywh_to_xyxy",
]

KINDS = ("auto", "fddb", "widerface")


def detect_kind(root: str | pathlib.Path) -> str:
    """Return "fddb" or "widerface" from the folder layout, so users can pass just a path."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory")
    if (root / FOLDS_DIR).is_dir() or any(root.glob("FDDB-fold-*.txt")):
        return "fddb"
    if (root / SPLIT_DIR).is_dir():
        return "widerface"
    raise DatasetError(
        f"cannot tell the dataset type of {root}: looked for {FOLDS_DIR}/ or FDDB-fold-*.txt (FDDB) "
        f"and {SPLIT_DIR}/ (WIDER FACE); pass the folder that contains one of them"
    )


def load_dataset(
    root: str | pathlib.Path,
    *,
    kind: str = "auto",
    folds: Sequence[int] | None = None,
    skip_missing: bool = False,
    check_images: bool = True,
) -> LabeledDataset:
    """Load FDDB (the given folds, default all) or WIDER FACE (every split present) from ``root``."""
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose one of: {', '.join(KINDS)}")
    resolved = detect_kind(root) if kind == "auto" else kind
    if resolved == "fddb":
        return load_fddb(root, folds, check_images=check_images, skip_missing=skip_missing)
    if folds is not None:
        raise DatasetError("folds apply to FDDB only; for WIDER FACE use LabeledDataset.select(events)")
    return load_widerface(root, "all", check_images=check_images, skip_missing=skip_missing)
