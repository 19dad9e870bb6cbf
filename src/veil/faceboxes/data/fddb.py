"""FDDB reader: fold lists + ellipse lists -> LabeledDataset with exact ellipse bounding rectangles.

FDDB annotates faces as rotated ellipses; rectangle detectors are scored against the tightest axis-aligned
rectangle around each ellipse, so the conversion is exact rather than a sampled approximation.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence

import numpy as np

from veil.errors import DatasetError
from veil.faceboxes.data.labels import (
    LabeledDataset,
    LabeledImage,
    check_image_files,
    read_face_count,
    rows_to_array,
)

_FOLD_RE = re.compile(r"^FDDB-fold-(\d+)\.txt$")
FOLDS_DIR = "FDDB-folds"
IMAGES_DIR = "originalPics"


def ellipses_to_boxes(ellipses: np.ndarray) -> np.ndarray:
    """Exact axis-aligned bounding rectangles [N,4] (x1,y1,x2,y2) of ellipses [N,5] (a, b, θ, cx, cy).

    ``a`` is the major radius and ``θ`` (radians) the angle of the major axis from the x axis, so the
    half-extents are sqrt((a cosθ)² + (b sinθ)²) horizontally and sqrt((a sinθ)² + (b cosθ)²) vertically.
    """
    e = np.asarray(ellipses, dtype=np.float64)
    if e.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != 5:
        raise DatasetError(f"ellipses must have shape [N,5] (major, minor, angle, cx, cy), got {e.shape}")
    a, b, theta, cx, cy = e.T
    cos, sin = np.cos(theta), np.sin(theta)
    half_w = np.hypot(a * cos, b * sin)
    half_h = np.hypot(a * sin, b * cos)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def _locate(root: pathlib.Path) -> tuple[pathlib.Path, bool]:
    """Return (folder holding the fold files, whether ``root`` is that folder itself)."""
    if not root.is_dir():
        raise DatasetError(f"FDDB root {root} does not exist or is not a directory")
    if (root / FOLDS_DIR).is_dir():
        return root / FOLDS_DIR, False
    if any(_FOLD_RE.match(p.name) for p in root.glob("FDDB-fold-*.txt")):
        return root, True
    raise DatasetError(
        f"no FDDB annotations under {root}: expected {root / FOLDS_DIR}/FDDB-fold-NN.txt "
        "(or the FDDB-fold-NN.txt files directly in it)"
    )


def available_folds(folds_dir: pathlib.Path) -> list[int]:
    """Fold numbers whose image-list file exists, ascending."""
    found = (_FOLD_RE.match(p.name) for p in folds_dir.glob("FDDB-fold-*.txt"))
    return sorted({int(m.group(1)) for m in found if m})


def _image_root(root: pathlib.Path, direct: bool, first_name: str | None) -> pathlib.Path:
    """Find the images: <root>/originalPics, <root>/../originalPics (root = FDDB-folds), or the bare tarball.

    The official originalPics.tar.gz unpacks to 2002/ and 2003/ without an originalPics folder.
    """
    candidates = [root / IMAGES_DIR]
    if direct:
        candidates.append(root.parent / IMAGES_DIR)
    for cand in candidates:
        if cand.is_dir():
            return cand
    top = first_name.split("/", 1)[0] if first_name else None
    for base in [root, root.parent] if direct else [root]:
        if top and (base / top).is_dir():
            return base
    return candidates[0]


def _read_fold_list(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, image name) for each non-blank line of an FDDB-fold-NN.txt."""
    if not path.is_file():
        raise DatasetError(f"FDDB fold file not found: {path}")
    entries = [(i, s) for i, line in enumerate(path.read_text().splitlines(), 1) if (s := line.strip())]
    if not entries:
        raise DatasetError(f"{path}:1: fold list is empty")
    return entries


def _parse_ellipse_list(
    path: pathlib.Path, expected: list[tuple[int, str]], fold_path: pathlib.Path
) -> list[tuple[str, np.ndarray]]:
    """Parse blocks of (name, count, count × 'major minor angle cx cy 1'), checking names against the fold."""
    if not path.is_file():
        raise DatasetError(f"FDDB ellipse list not found: {path}")
    lines = path.read_text().splitlines()
    rows: list[list[str]] = []
    row_lines: list[int] = []
    spans: list[tuple[str, int, int]] = []  # (name, first row, end row)
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        i += 1
        if not name:
            continue
        k = len(spans)
        if k >= len(expected):
            raise DatasetError(f"{path}:{i}: image {name!r} is not in {fold_path} ({len(expected)} images)")
        exp_line, exp_name = expected[k]
        if name != exp_name:
            where = f"{fold_path}:{exp_line}"
            raise DatasetError(f"{path}:{i}: image {name!r} does not match {where} {exp_name!r}")
        count_line = i + 1
        count = read_face_count(lines, i, path)
        i += 1
        start = len(rows)
        for got in range(count):
            fields = lines[i].split() if i < len(lines) else []
            if len(fields) <= 1:  # end of file, blank line, or the next image's name
                msg = f"{name!r} declares {count} faces but only {got} ellipse lines follow"
                raise DatasetError(f"{path}:{count_line}: {msg}")
            if len(fields) not in (5, 6):
                raise DatasetError(
                    f"{path}:{i + 1}: expected 6 fields 'major minor angle cx cy 1', got {len(fields)}"
                )
            rows.append(fields[:5])
            row_lines.append(i + 1)
            i += 1
        spans.append((name, start, len(rows)))
    if len(spans) < len(expected):
        exp_line, exp_name = expected[len(spans)]
        raise DatasetError(
            f"{path}:{len(lines)}: file ends after {len(spans)} images but {fold_path}:{exp_line} "
            f"lists {exp_name!r} ({len(expected)} images)"
        )
    values = rows_to_array(rows, row_lines, path, 5)
    negative = (values[:, :2] < 0).any(axis=1)
    if negative.any():
        raise DatasetError(f"{path}:{row_lines[int(np.argmax(negative))]}: ellipse radii must be >= 0")
    return [(name, values[s:e]) for name, s, e in spans]


def load_fddb(
    root: str | pathlib.Path,
    folds: Sequence[int] | None = None,
    *,
    check_images: bool = True,
    skip_missing: bool = False,
    image_root: str | pathlib.Path | None = None,
) -> LabeledDataset:
    """Load FDDB folds (default: every fold file present) from ``root`` or ``root/FDDB-folds``.

    Images are expected at ``<root>/originalPics/<name>.jpg`` unless ``image_root`` says otherwise.
    ``check_images=False`` loads annotations only (the official folds ship without images).
    """
    root = pathlib.Path(root)
    folds_dir, direct = _locate(root)
    fold_ids = available_folds(folds_dir) if folds is None else sorted({int(f) for f in folds})
    if not fold_ids:
        raise DatasetError(f"no FDDB-fold-NN.txt files in {folds_dir}")
    parsed: list[tuple[int, list[tuple[str, np.ndarray]]]] = []
    for fold in fold_ids:
        fold_path = folds_dir / f"FDDB-fold-{fold:02d}.txt"
        names = _read_fold_list(fold_path)
        ell_path = folds_dir / f"FDDB-fold-{fold:02d}-ellipseList.txt"
        parsed.append((fold, _parse_ellipse_list(ell_path, names, fold_path)))
    first = parsed[0][1][0][0] if parsed and parsed[0][1] else None
    img_dir = pathlib.Path(image_root) if image_root is not None else _image_root(root, direct, first)
    images = [
        LabeledImage(
            name=name,
            path=img_dir / f"{name}.jpg",
            group=str(fold),
            boxes=ellipses_to_boxes(ell),
            ellipses=ell,
        )
        for fold, blocks in parsed
        for name, ell in blocks
    ]
    present, absent = check_image_files(
        images, check_images=check_images, skip_missing=skip_missing, where=img_dir
    )
    label = root.parent.name if root.name == FOLDS_DIR else root.name
    return LabeledDataset(
        name=label or "fddb",
        images=present,
        missing=[img.name for img in absent],
        missing_groups=[img.group for img in absent],
    )
