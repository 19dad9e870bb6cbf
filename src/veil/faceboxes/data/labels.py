"""Dataset-neutral ground truth: one image with its face boxes, and a dataset that splits by whole groups.

Evaluation code only sees these types, so FDDB and WIDER FACE readers can be swapped without touching it.
Groups (FDDB folds, WIDER events) are the unit of sharding, so per-group results merge exactly later.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from veil.errors import DatasetError

_LEADING_INT = re.compile(r"^(\d+)")
PARTS = ("all", "train", "test")


def image_part(name: str) -> str:
    """ "train" or "test": the half an image belongs to (a hash of its name, stable everywhere)."""
    return "train" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "test"


def group_sort_key(group: str) -> tuple[int, int, str]:
    """Sort key that orders "2" before "10" (FDDB folds) and "9--Press" before "12--Group" (WIDER events)."""
    m = _LEADING_INT.match(group)
    return (0, int(m.group(1)), group) if m else (1, 0, group)


def _frozen_array(a: np.ndarray | None, dtype: type, ncols: int | None, what: str) -> np.ndarray | None:
    """Copy to a read-only array of the agreed dtype/shape, so a frozen LabeledImage is really immutable."""
    if a is None:
        return None
    out: np.ndarray = np.array(a, dtype=dtype, copy=True)
    if ncols is None:
        if out.ndim != 1:
            raise DatasetError(f"{what} must be 1-D, got shape {out.shape}")
    else:
        if out.size == 0:
            out = out.reshape(0, ncols)
        if out.ndim != 2 or out.shape[1] != ncols:
            raise DatasetError(f"{what} must have shape [N,{ncols}], got {out.shape}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class LabeledImage:
    """One annotated image. Boxes are x1,y1,x2,y2 in original-image pixels (not clipped to the image).

    ``eq=False`` keeps identity hashing: comparing numpy arrays with ``==`` has no single truth value.
    """

    name: str
    path: pathlib.Path
    group: str
    boxes: np.ndarray
    ellipses: np.ndarray | None = None
    ignore: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = _frozen_array(self.boxes, np.float64, 4, f"{self.name}: boxes")
        n = 0 if boxes is None else boxes.shape[0]
        ellipses = _frozen_array(self.ellipses, np.float64, 5, f"{self.name}: ellipses")
        ignore = _frozen_array(self.ignore, np.bool_, None, f"{self.name}: ignore")
        for arr, what in ((ellipses, "ellipses"), (ignore, "ignore")):
            if arr is not None and arr.shape[0] != n:
                raise DatasetError(f"{self.name}: {what} has {arr.shape[0]} rows but boxes has {n}")
        object.__setattr__(self, "path", pathlib.Path(self.path))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "ellipses", ellipses)
        object.__setattr__(self, "ignore", ignore)

    @property
    def num_faces(self) -> int:
        """Number of annotated faces, ignored ones included."""
        return int(self.boxes.shape[0])


@dataclass
class LabeledDataset:
    """An ordered list of labeled images plus the names that were skipped because their file is absent.

    ``missing_groups`` (parallel to ``missing``, may be empty when unknown) lets select/shard keep each
    skipped name with its own group, so merged shard reports count every missing image exactly once.
    """

    name: str
    images: list[LabeledImage]
    missing: list[str] = field(default_factory=list)
    missing_groups: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[LabeledImage]:
        return iter(self.images)

    @property
    def num_faces(self) -> int:
        """Total number of annotated faces over all images."""
        return sum(img.num_faces for img in self.images)

    @property
    def groups(self) -> list[str]:
        """Distinct groups in natural order (FDDB folds numerically)."""
        found = {img.group for img in self.images} | set(self.missing_groups)
        return sorted(found, key=group_sort_key)

    def by_group(self) -> dict[str, list[LabeledImage]]:
        """Images per group, groups in natural order, images in dataset order."""
        out: dict[str, list[LabeledImage]] = {g: [] for g in self.groups}
        for img in self.images:
            out[img.group].append(img)
        return out

    def select(self, groups: Iterable[str | int]) -> LabeledDataset:
        """Keep only the given groups (ints are accepted for FDDB folds); unknown groups are an error."""
        wanted = {str(g) for g in groups}
        unknown = wanted - set(self.groups)
        if unknown:
            raise DatasetError(
                f"{self.name}: unknown group(s) {sorted(unknown, key=group_sort_key)}; "
                f"available: {', '.join(self.groups)}"
            )
        return self._subset(wanted)

    def shard(self, index: int, num_shards: int) -> LabeledDataset:
        """Shard ``index`` of ``num_shards``: the i-th group (natural order) goes to shard i % num_shards."""
        if num_shards < 1 or not 0 <= index < num_shards:
            raise DatasetError(f"shard index {index} is out of range for {num_shards} shard(s)")
        keep = {g for i, g in enumerate(self.groups) if i % num_shards == index}
        return self._subset(keep)

    def part(self, name: str) -> LabeledDataset:
        """A fixed half of the images, for training on one and measuring on the other ("all": everything).

        An image is in "train" or "test" by a hash of its name, so the split is stable across runs,
        machines and dataset orderings, and needs no extra file. Missing names stay with every part.
        """
        if name == "all":
            return self
        if name not in PARTS:
            raise DatasetError(f"unknown part {name!r}; choose one of: {', '.join(PARTS)}")
        images = [img for img in self.images if image_part(img.name) == name]
        return LabeledDataset(f"{self.name}[{name}]", images, list(self.missing), list(self.missing_groups))

    def _subset(self, keep: set[str]) -> LabeledDataset:
        images = [img for img in self.images if img.group in keep]
        if len(self.missing_groups) == len(self.missing):
            pairs = [(n, g) for n, g in zip(self.missing, self.missing_groups, strict=True) if g in keep]
            missing, missing_groups = [n for n, _ in pairs], [g for _, g in pairs]
        else:  # group of each missing name unknown: keep them all rather than silently drop any
            missing, missing_groups = list(self.missing), []
        return LabeledDataset(self.name, images, missing, missing_groups)


def check_image_files(
    images: Sequence[LabeledImage], *, check_images: bool, skip_missing: bool, where: pathlib.Path
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Split images into (present, missing); fail loudly unless the caller opted into skipping.

    A silently shrunken test set would make accuracy numbers incomparable, hence the error by default.
    """
    if not check_images:
        return list(images), []
    present = [img for img in images if img.path.is_file()]
    absent = [img for img in images if not img.path.is_file()] if len(present) != len(images) else []
    if absent and not present:
        raise DatasetError(
            f"none of the {len(images)} images exist under {where} (e.g. {absent[0].path}); "
            "check --dataset: the folder the annotations' image paths start from "
            "(from Python, check_images=False loads the annotations alone)"
        )
    if absent and not skip_missing:
        first = ", ".join(str(img.path) for img in absent[:3])
        raise DatasetError(
            f"{len(absent)} of {len(images)} images are missing under {where} (first: {first}); "
            "pass --skip-missing (skip_missing=True) to evaluate only the images that exist"
        )
    return present, absent


def rows_to_array(rows: list[list[str]], row_lines: list[int], path: pathlib.Path, ncols: int) -> np.ndarray:
    """Convert all numeric fields of a file at once; only on failure walk the rows to name the bad line."""
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), ncols)
    except ValueError:
        for fields, line in zip(rows, row_lines, strict=True):
            for f in fields:
                try:
                    float(f)
                except ValueError:
                    raise DatasetError(f"{path}:{line}: not a number: {f!r}") from None
        raise
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DatasetError(f"{path}:{row_lines[int(np.argmax(bad))]}: values must be finite")
    return values


def read_face_count(lines: Sequence[str], i: int, path: pathlib.Path) -> int:
    """The face count on ``lines[i]`` (both FDDB and WIDER files give one after each image's name)."""
    count_s = lines[i].strip() if i < len(lines) else ""
    try:
        count = int(count_s)
    except ValueError:
        msg = f"expected a face count (integer), got {count_s!r}"
        raise DatasetError(f"{path}:{i + 1}: {msg}") from None
    if count < 0:
        raise DatasetError(f"{path}:{i + 1}: face count must be >= 0, got {count}")
    return count
