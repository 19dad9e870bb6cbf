"""Classification metrics over the three mask classes: accuracy, balanced accuracy, recall, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.mask_compliance.data import CLASSES


def confusion(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> np.ndarray:
    """[true class, predicted class] counts."""
    m = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return m


def scores(m: np.ndarray) -> dict[str, Any]:
    """``accuracy``, ``balanced_accuracy`` (mean recall over classes present), ``per_class`` recall."""
    support = m.sum(1)
    recall = np.where(support > 0, np.diag(m) / np.maximum(support, 1), np.nan)
    present = support > 0
    return {
        "accuracy": float(np.trace(m) / max(1, m.sum())),
        "balanced_accuracy": float(np.nanmean(recall[present])) if present.any() else float("nan"),
        "per_class": {c: float(r) for c, r in zip(CLASSES, recall, strict=True) if not np.isnan(r)},
        "support": {c: int(s) for c, s in zip(CLASSES, support, strict=True)},
    }


def plot_confusion(m: np.ndarray, title: str, out: str | Path) -> Path:
    """A PNG of the confusion matrix (counts, rows normalised to recall by colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]}\n{rows[i, j]:.0%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.6 else "black", fontsize=9)  # fmt: skip
    short = ["with", "without", "incorrect"]
    ax.set_xticks(range(len(CLASSES)), short)
    ax.set_yticks(range(len(CLASSES)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="share of the annotated class")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
