"""The index of the transforms a task ships inside its package (torch-free).

A task keeps its ``Protected.save`` transform directories in one folder, with ``shipped.json`` naming the
default (``{"default": dir name, "split": the default's split, ...}``; a transform's own ``transform.json``
is digest-protected, so the default is named beside it, not marked inside it)::

    SHIPPED = ShippedTransforms(Path(__file__).parent / "transforms", "breast-cancer")
    SHIPPED.at(0.6)         # the default split's transform at alpha 0.6, or one line listing what ships
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veil.errors import InputError

INDEX = "shipped.json"


class ShippedTransforms:
    """The transforms in ``folder`` (``*/transform.json``) and its ``shipped.json``; ``what`` names them in
    messages."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = Path(folder), what

    def index(self) -> dict[str, Any]:
        """``shipped.json`` (empty when absent or unreadable)."""
        path = self.folder / INDEX
        try:
            return dict(json.loads(path.read_text())) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    def _records(self) -> list[tuple[str, float, Path]]:
        found = []
        for meta_file in self.folder.glob("*/transform.json"):
            record = json.loads(meta_file.read_text())
            found.append((str(record.get("split")), float(record["alpha"]), meta_file.parent))
        return sorted(found)

    def all(self) -> list[Path]:
        """Every shipped transform directory, sorted by split then alpha."""
        return [path for _, _, path in self._records()]

    def by_alpha(self, split: str | None = None) -> dict[float, Path]:
        """Directories of ``split`` by alpha (default: the default's split; all when there is none)."""
        split = split or self.default_split()
        return {a: p for s, a, p in self._records() if split is None or s == split}

    def default(self) -> Path | None:
        """The default transform directory, if one is shipped."""
        name = self.index().get("default")
        return self.folder / str(name) if name else None

    def default_split(self) -> str | None:
        """The default transform's split, if one is shipped."""
        split = self.index().get("split")
        return str(split) if split else None

    def at(self, alpha: float) -> Path:
        """The default split's transform at ``alpha``, or the one line listing the alphas there are."""
        found = self.by_alpha()
        for a, path in found.items():
            if abs(a - float(alpha)) < 1e-9:
                return path
        have = ", ".join(f"{a:g}" for a in sorted(found)) or "none"
        raise InputError(
            f"no shipped {self.what} transform at alpha {alpha:g} (shipped: {have}): pick one, or pass "
            "--transform DIR"
        )
