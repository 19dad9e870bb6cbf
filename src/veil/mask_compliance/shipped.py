"""The mask-compliance transforms veil ships (``veil/mask_compliance/transforms/``), made with the public
API by ``scripts/mask_transforms.py``; ``shipped.json`` names the default. Reading needs no torch.

Each directory is a ``Protected.save`` transform of the shipped classifier named
``mask-compliance-<split>-alpha<A>``. Measured in ``docs/mask-compliance.md``.
"""

from __future__ import annotations

from pathlib import Path

from veil.models.shipped import ShippedTransforms

SHIPPED = ShippedTransforms(Path(__file__).resolve().parent / "transforms", "mask-compliance")
SHIPPED_DIR = SHIPPED.folder

all_transforms = SHIPPED.all
shipped_transforms = SHIPPED.by_alpha
shipped_default = SHIPPED.default
shipped_default_split = SHIPPED.default_split
transform_for = SHIPPED.at
