"""What the package ships so that its main job runs anywhere: weights, a sample, the default's attacker.

* ``faceboxes/FaceBoxes.pth`` — the FaceBoxes checkpoint every shipped transform was trained for (MIT),
* ``fddb-sample/`` — 7 FDDB photos with their fold files (11 faces; MIT test fixtures),
* ``attackers/`` — the reconstruction attacker of the default release (``reports/audit-default-full``).

Every file is listed in ``SHA256SUMS`` and checked when it is handed out; ``NOTICE.md`` gives sources and
licences. Nothing here imports torch, so command-line start-up stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from veil.errors import CheckpointError, VeilError

ASSETS_DIR = Path(__file__).resolve().parent
SUMS = "SHA256SUMS"
WEIGHTS = "faceboxes/FaceBoxes.pth"
SAMPLE = "fddb-sample"
ATTACKERS = "attackers/attackers.json"

__all__ = [
    "ASSETS_DIR",
    "attacker_for",
    "choose",
    "default_weights",
    "sample_dataset",
    "verified",
]


def _sums() -> dict[str, str]:
    """``SHA256SUMS`` as {relative path: hex digest}."""
    out = {}
    for line in (ASSETS_DIR / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            out[name.strip()] = digest.strip().lower()
    return out


@cache
def _digest(path: Path, size: int, mtime: float) -> str:  # keyed on size/mtime: re-hash after a change
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verified(relative: str) -> Path:
    """The shipped file ``relative`` (to this folder), after checking it against ``SHA256SUMS``."""
    want = _sums().get(relative)
    path = ASSETS_DIR / relative
    if want is None or not path.is_file():
        raise CheckpointError(
            f"veil's shipped {relative} is missing from {ASSETS_DIR}: "
            "reinstall veil (pip install --force-reinstall)"
        )
    stat = path.stat()
    got = _digest(path, stat.st_size, stat.st_mtime)
    if got != want:
        raise CheckpointError(
            f"{path}: SHA-256 {got[:12]}… is not the shipped {want[:12]}… (damaged install): "
            "reinstall veil (pip install --force-reinstall) or pass your own file explicitly"
        )
    return path


def default_weights() -> Path:
    """The shipped FaceBoxes checkpoint (``FaceBoxes.pth``), SHA-256 checked."""
    return verified(WEIGHTS)


def sample_dataset() -> Path:
    """The shipped FDDB sample (7 images, 11 faces, FDDB layout), every file SHA-256 checked."""
    for name in _sums():
        if name.startswith(SAMPLE + "/"):
            verified(name)
    return ASSETS_DIR / SAMPLE


def attacker_for(release_sha256: str | None) -> Path | None:
    """The shipped reconstruction attacker trained against this release (by its digest), if any."""
    if not release_sha256:
        return None
    index = json.loads((ASSETS_DIR / ATTACKERS).read_text())
    for entry in index["attackers"]:
        if release_sha256 in entry["release_sha256"]:  # the digest under each transform format
            return verified(entry["file"])
    return None


def choose(given: Path | None, env: str, shipped: Callable[[], Path], what: str) -> Path:
    """``given`` (an option) > ``$env`` > the shipped default; a missing path is one error line."""
    if given is None and not os.environ.get(env):
        return shipped()
    chosen = given if given is not None else Path(os.environ[env])
    if not chosen.exists():
        source = f"${env}" if given is None else "the path given"
        raise VeilError(
            f"{what} not found at {chosen} ({source}): fix the path, or leave it out for veil's own"
        )
    return chosen
