"""The breast-cancer rows: scikit-learn's bundled UCI WDBC data (569 x 30, read from sklearn's package, no
download), one fixed stratified train/test split, and the standardisation statistics of the train rows.

Split: ``sklearn.model_selection.train_test_split(test_size=0.3, stratify=y, random_state=SPLIT_SEED)``,
398 train rows and 171 test rows with the same malignant/benign shares. The model, the transforms and the
attacker all learn on the train rows only; every accuracy and R^2 claim is on the test rows.

Labels follow sklearn: 0 = malignant (212 rows), 1 = benign (357). Features are the 30 sklearn columns
(``mean radius`` ... ``worst fractal dimension``) as raw numbers; the model standardises them itself
(its first module, :class:`veil.tabular.model.Standardize`, holds the train rows' mean and std), so a
client sends the raw columns and applies nothing. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from veil.errors import InputError

#: Seed of the stratified split (the issue's number: changing it changes every number in docs/tabular.md).
SPLIT_SEED = 34
TEST_SIZE = 0.3
PARTS = ("train", "test", "all")


@dataclass(frozen=True)
class Rows:
    """Feature rows (float32, raw units) and their labels."""

    x: np.ndarray  # (N, 30) float32
    y: np.ndarray  # (N,) int64, 0 malignant, 1 benign
    name: str


def _sklearn() -> object:
    try:
        from sklearn import datasets
    except ImportError:
        raise InputError(
            "the breast-cancer task reads scikit-learn's bundled data: pip install 'veil[tabular]' "
            "(or scikit-learn)"
        ) from None
    return datasets


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    datasets = _sklearn()
    bunch = datasets.load_breast_cancer()  # type: ignore[attr-defined]
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y, tuple(str(n) for n in bunch.feature_names), tuple(str(n) for n in bunch.target_names)


def feature_names() -> list[str]:
    """The 30 column names, as sklearn gives them."""
    return list(_load()[2])


def class_names() -> list[str]:
    """``["malignant", "benign"]`` (label 0, label 1)."""
    return list(_load()[3])


@lru_cache(maxsize=1)
def _indices() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    y = _load()[1]
    train, test = train_test_split(
        np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


def rows(part: str = "test") -> Rows:
    """The ``train``, ``test`` or ``all`` rows of the bundled data."""
    if part not in PARTS:
        raise InputError(f"--part must be one of {', '.join(PARTS)} for the breast-cancer data, got {part!r}")
    x, y, _, _ = _load()
    if part == "all":
        return Rows(x.copy(), y.copy(), "all")
    idx = _indices()[0 if part == "train" else 1]
    return Rows(x[idx], y[idx], part)


def standardisation() -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature over the train rows (population std), as the model's first module holds."""
    train = rows("train").x.astype(np.float64)
    return train.mean(0).astype(np.float32), train.std(0).astype(np.float32)


def read_csv(path: Path) -> Rows:
    """Rows of a CSV file with a header naming the 30 sklearn feature columns and ``target`` (0/1)."""
    names = feature_names()
    try:
        with Path(path).open() as f:
            header = [h.strip() for h in f.readline().strip().split(",")]
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV of numbers ({exc})") from None
    missing = [n for n in [*names, "target"] if n not in header]
    if missing:
        raise InputError(
            f"{path}: the header lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: name "
            "the 30 sklearn breast-cancer feature columns and 'target' (0 malignant, 1 benign)"
        )
    if table.shape[1] != len(header) or not len(table):
        raise InputError(f"{path}: {table.shape[1]} columns per row for a {len(header)}-column header")
    x = table[:, [header.index(n) for n in names]].astype(np.float32)
    y = table[:, header.index("target")]
    if not np.isfinite(x).all() or not np.isin(y, (0, 1)).all():
        raise InputError(f"{path}: features must be finite and target 0 or 1")
    return Rows(x, y.astype(np.int64), Path(path).name)
