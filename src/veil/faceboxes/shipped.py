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


def shipped_by_name() -> dict[str, Path]:
    """Every shipped transform directory by its name (``faceboxes-<split>-alpha<A>``: model, split, alpha)."""
    return {meta.parent.name: meta.parent for meta in sorted(SHIPPED_DIR.glob("*/transform.json"))}


def resolve_alpha(alpha: float) -> tuple[Path | None, list[str]]:
    """``--alpha A``: the default configuration's transform at ``A`` (one per alpha, so never ambiguous),
    and the names of the other shipped transforms at ``A`` (another split), which only ``--transform NAME``
    selects."""
    chosen = next((p for a, p in shipped_transforms().items() if abs(a - alpha) < 1e-9), None)
    others = []
    for name, path in shipped_by_name().items():
        record = json.loads((path / "transform.json").read_text())
        if abs(float(record["alpha"]) - alpha) < 1e-9 and path != chosen:
            others.append(name)
    return chosen, others
