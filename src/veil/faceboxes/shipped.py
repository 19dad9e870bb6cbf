"""The FaceBoxes transforms trained with this repository's code for ``FaceBoxes.pth``; they ship inside
the package (``veil/faceboxes/transforms/``). Reading the index needs no torch."""

from __future__ import annotations

import json
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "transforms"


def shipped_transforms(include_all: bool = False) -> dict[float, Path]:
    """Shipped transform directories keyed by alpha: the default configuration (one per alpha).

    ``include_all`` adds the others; where two share an alpha, the default configuration's wins.
    """
    found: dict[float, Path] = {}
    for meta_file in sorted(SHIPPED_DIR.glob("*/transform.json")):
        record = json.loads(meta_file.read_text())
        default = bool(record.get("default", False))
        alpha = float(record["alpha"])
        if default or (include_all and alpha not in found):
            found[alpha] = meta_file.parent
    return found


def shipped_default_split() -> str | None:
    """The split of the shipped default transform(s) (``"default": true``), if any."""
    splits: set[str] = set()
    for meta_file in sorted(SHIPPED_DIR.glob("*/transform.json")):
        try:
            record = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if record.get("default") is True:
            splits.add(str(record.get("split")))
    return ", ".join(sorted(splits)) or None
