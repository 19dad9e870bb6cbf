"""Evaluation reports: the reference design's text log and a JSON result file.

The text block reproduces the reference FDDB evaluator's log byte for byte (floats via ``repr``,
the mean as ``sum(aps) / len(aps)`` in fold order) so logs can be diffed against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.files import follow_umask

__all__ = ["EvalResult", "fold_mean", "format_tr_results", "write_json_atomic"]

_HEADER = "==================== Results ===================="
_FOOTER = "================================================="


def _fold_key(name: str) -> tuple[int, int | str]:
    """Numeric folds first in numeric order ("2" before "10"), anything else after, by name."""
    try:
        return (0, int(name))
    except ValueError:
        return (1, name)


def _ordered(fold_aps: Mapping[str, float]) -> list[tuple[str, float]]:
    return [(k, float(fold_aps[k])) for k in sorted(fold_aps, key=_fold_key)]


def fold_mean(fold_aps: Mapping[str, float]) -> float:
    """Mean AP over folds, summed in fold order like the reference (so the last digits match)."""
    aps = [ap for _, ap in _ordered(fold_aps)]
    if not aps:
        raise ValueError("no fold APs to average")
    return sum(aps) / len(aps)


def format_tr_results(fold_aps: Mapping[str, float], dataset: str = "FDDB") -> str:
    """The reference "Results" block (no trailing newline) for fold APs keyed "1".."10".

    Non-numeric groups (WIDER FACE events) are labelled ``<dataset>-<group>`` instead of a fold.
    """
    mean = fold_mean(fold_aps)
    lines = [_HEADER]
    lines += [
        f"{dataset}-fold-{k} Val AP: {ap!r}" if _fold_key(k)[0] == 0 else f"{dataset}-{k} Val AP: {ap!r}"
        for k, ap in _ordered(fold_aps)
    ]
    lines += [f"{dataset} Dataset Average AP: {mean!r}", _FOOTER, f"mAP: {mean!r}"]
    return "\n".join(lines)


@dataclass
class EvalResult:
    """Everything one FDDB evaluation run reports; ``to_json``/``from_json`` round-trip exactly."""

    folds: dict[str, float]
    average_ap: float
    map: float
    pooled_ap: float
    roc: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    faces: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict in the documented schema, folds in numeric order."""
        return {
            "folds": {k: ap for k, ap in _ordered(self.folds)},
            "average_ap": float(self.average_ap),
            "map": float(self.map),
            "pooled_ap": float(self.pooled_ap),
            "roc": self.roc,
            "images": int(self.images),
            "faces": int(self.faces),
            "seconds": float(self.seconds),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_json`; a missing key raises KeyError naming it."""
        return cls(
            folds={str(k): float(v) for k, v in data["folds"].items()},
            average_ap=float(data["average_ap"]),
            map=float(data["map"]),
            pooled_ap=float(data["pooled_ap"]),
            roc=dict(data.get("roc", {})),
            images=int(data["images"]),
            faces=int(data["faces"]),
            seconds=float(data["seconds"]),
        )


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON so readers never see a half-written file: temp file in the same dir, then replace."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        follow_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
