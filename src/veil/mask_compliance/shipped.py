"""The mask-compliance transforms veil ships (``veil/mask_compliance/transforms/``), made with the public
API by ``scripts/mask_transforms.py``; ``shipped.json`` names the default. Reading needs no torch.

Each directory is a ``Protected.save`` transform of the shipped classifier named
``mask-compliance-<split>-alpha<A>`` (``transform.json`` is digest-protected, so the default is named in the
index, not marked inside it). Measured in ``docs/mask-compliance.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parent / "transforms"
INDEX = "shipped.json"


def index() -> dict[str, Any]:
    """``shipped.json``: ``{"default": dir name, "split": the default's split, ...}`` (empty if none)."""
    path = SHIPPED_DIR / INDEX
    try:
        return dict(json.loads(path.read_text())) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def all_transforms() -> list[Path]:
    """Every shipped transform directory, sorted by split then alpha."""
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
        if split is None or record.get("split") == split:
            out[float(record["alpha"])] = path
    return out


def shipped_default() -> Path | None:
    """The default transform directory, if one is shipped."""
    name = index().get("default")
    return SHIPPED_DIR / str(name) if name else None


def shipped_default_split() -> str | None:
    """The default transform's split, if one is shipped."""
    split = index().get("split")
    return str(split) if split else None
