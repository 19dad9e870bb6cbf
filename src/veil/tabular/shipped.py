"""The breast-cancer transforms veil ships (``veil/tabular/transforms/``), made with the public API by
``scripts/tabular_transforms.py``. ``shipped.json`` names the default; reading it needs no torch.

Each directory is a ``Protected.save`` transform named ``breast-cancer-<split>-alpha<A>``; the default split
(``act1``, after the first hidden layer) has one per alpha, ``act2`` (after the second) is the comparison.
"""

from __future__ import annotations

from pathlib import Path

from veil.models.shipped import ShippedTransforms

SHIPPED = ShippedTransforms(Path(__file__).resolve().parent / "transforms", "breast-cancer")
SHIPPED_DIR = SHIPPED.folder

all_transforms = SHIPPED.all
shipped_transforms = SHIPPED.by_alpha
default_transform = SHIPPED.default
default_split = SHIPPED.default_split
transform_for = SHIPPED.at
