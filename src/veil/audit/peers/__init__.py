"""Peer defences on veil's split, data and attacks (``veil audit --peers``), and the frontier plot.

``baselines``: Gaussian noise, Shredder, NoPeek, DISCO, input blur / downscale, each a ``Protected``
built in memory for any image model at a split point; ``run``: accuracy retained and attacker SSIM for
each, next to veil's transforms; ``frontier``: the plot and the "dominated at matched accuracy" verdicts.
The task's side (its metric, its training inputs) comes from ``ModelEntry.peers`` (:class:`PeerTask`).
"""

from __future__ import annotations

from veil.audit.peers.baselines import build_peers
from veil.audit.peers.common import (
    DEFAULT_LEVELS,
    FAMILIES,
    KNOBS,
    PeerConfig,
    PeerTask,
    check_families,
)
from veil.audit.peers.frontier import dominated_by, plot_frontier, verdicts
from veil.audit.peers.run import AttackTarget, ExtraAttack, run_peers

__all__ = [
    "DEFAULT_LEVELS",
    "FAMILIES",
    "KNOBS",
    "AttackTarget",
    "ExtraAttack",
    "PeerConfig",
    "PeerTask",
    "build_peers",
    "check_families",
    "dominated_by",
    "plot_frontier",
    "run_peers",
    "verdicts",
]
