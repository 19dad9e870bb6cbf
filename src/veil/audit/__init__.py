"""The privacy audit: what can someone who receives the released tensors recover?

* :mod:`veil.audit.attack` — the reconstruction attacker (a decoder sized from the wire), its training
  and scoring; :mod:`veil.audit.linkage` — the linkage verifier; :mod:`veil.audit.metrics` — SSIM, PSNR,
  dCor, ROC AUC; :mod:`veil.audit.measure` — what every audit measures, and the mean-image floor;
* :mod:`veil.audit.generic` — the audit of any ``veil.protect`` image transform;
  :mod:`veil.audit.online` — the online attacker an adversarial ``Protected.fit`` plays against;
* :mod:`veil.audit.faceboxes` — ``run_audit``, FaceBoxes' audit (clean heads at its split points, its
  transforms, the ``veil sweep`` join).

The pieces are usable on their own, e.g. from a notebook: ``reconstruct(released, attacker)`` shows what
leaves the machine. Names load on first use, so importing a generic module never imports a task.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.audit.attack import (
        AttackConfig,
        Attacker,
        NoiseSpec,
        adapt_attacker,
        reconstruct,
        train_attacker,
    )
    from veil.audit.decoder import Decoder
    from veil.audit.faceboxes import run_audit
    from veil.audit.linkage import LinkageConfig
    from veil.audit.metrics import distance_correlation, psnr, roc_auc, ssim
    from veil.audit.report import AuditResult
    from veil.audit.store import load_attacker, save_attacker

from veil.audit.choices import ATTACKS, PEERS

_LAZY = {
    "AttackConfig": "veil.audit.attack",
    "Attacker": "veil.audit.attack",
    "NoiseSpec": "veil.audit.attack",
    "adapt_attacker": "veil.audit.attack",
    "reconstruct": "veil.audit.attack",
    "train_attacker": "veil.audit.attack",
    "Decoder": "veil.audit.decoder",
    "run_audit": "veil.audit.faceboxes",
    "LinkageConfig": "veil.audit.linkage",
    "distance_correlation": "veil.audit.metrics",
    "psnr": "veil.audit.metrics",
    "roc_auc": "veil.audit.metrics",
    "ssim": "veil.audit.metrics",
    "AuditResult": "veil.audit.report",
    "load_attacker": "veil.audit.store",
    "save_attacker": "veil.audit.store",
}
__all__ = [
    "ATTACKS",
    "PEERS",
    "AttackConfig",
    "Attacker",
    "AuditResult",
    "Decoder",
    "LinkageConfig",
    "NoiseSpec",
    "adapt_attacker",
    "distance_correlation",
    "load_attacker",
    "psnr",
    "reconstruct",
    "roc_auc",
    "run_audit",
    "save_attacker",
    "ssim",
    "train_attacker",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veil.audit' has no attribute {name!r}")
