"""The breast-cancer transforms veil ships (``veil/tabular/transforms/``), made with the public API by
``scripts/tabular_transforms.py``. ``shipped.json`` names the default; reading it needs no torch.

Each directory is a ``Protected.save`` transform named ``breast-cancer-<split>-alpha<A>``; the default split
(``act1``, after the first hidden layer) has one per alpha, ``act2`` (after the second) is the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veil.errors import InputError

SHIPPED_DIR = Path(__file__).resolve().parent / "transforms"
INDEX = "shipped.json"


def index() -> dict[str, Any]:
    """``shipped.json``: ``{"default": dir name, "split": default split, "retained_target": 0.97}``."""
    path = SHIPPED_DIR / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def all_transforms() -> list[Path]:
    """Every shipped transform directory (both splits), sorted by split then alpha."""
    found = []
    for meta_file in SHIPPED_DIR.glob("*/transform.json"):
        record = json.loads(meta_file.read_text())
        found.append((str(record.get("split")), float(record["alpha"]), meta_file.parent))
    return [path for _, _, path in sorted(found)]


def shipped_transforms(split: str | None = None) -> dict[float, Path]:
    """Transform directories of ``split`` (default: the default's split) keyed by alpha."""
    split = split or index().get("split")
    out = {}
    for path in all_transforms():
        record = json.loads((path / "transform.json").read_text())
        if record.get("split") == split:
            out[float(record["alpha"])] = path
    return out


def default_transform() -> Path | None:
    name = index().get("default")
    return SHIPPED_DIR / name if name else None


def default_split() -> str | None:
    split = index().get("split")
    return str(split) if split else None


def transform_for(alpha: float) -> Path:
    """The default split's shipped transform at ``alpha``, or the one line listing the alphas there are."""
    found = shipped_transforms()
    for a, path in found.items():
        if abs(a - alpha) < 1e-9:
            return path
    have = ", ".join(f"{a:g}" for a in sorted(found)) or "none"
    raise InputError(
        f"no shipped breast-cancer transform at alpha {alpha:g} (shipped: {have}): pick one, or pass "
        "--transform DIR"
    )
