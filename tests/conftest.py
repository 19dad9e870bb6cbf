"""Shared fixtures: real data lives read-only in ../shared and tests skip cleanly when a clone lacks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: A training run small enough for CI (seconds on CPU); tests override what they study.
TINY_TRAIN: dict[str, int] = {"samples": 8, "steps": 40, "batch_size": 4, "input_size": 256, "log_every": 10}

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def run_veil(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``veil`` command as a user runs it (its own process, errors as the CLI prints them)."""
    return subprocess.run(
        [sys.executable, "-c", "from veil.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _require(path: Path) -> Path:
    """Return ``path`` or skip, so a user's clone without ../shared still passes."""
    if not path.exists():
        pytest.skip(f"../shared not found (looked for {path}); real-data tests need the shared folder")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder next to the repository."""
    return _require(SHARED_DIR)


@pytest.fixture(scope="session")
def fddb_folds(shared_dir: Path) -> Path:
    """The complete official FDDB annotations (no images)."""
    return _require(shared_dir / "data" / "fddb")


@pytest.fixture(scope="session")
def fddb_sample(shared_dir: Path) -> Path:
    """7 real FDDB images in folds 1 and 6 with their annotations."""
    return _require(shared_dir / "data" / "fddb-sample")


@pytest.fixture(scope="session")
def widerface_sample(shared_dir: Path) -> Path:
    """10 real WIDER FACE images (6 train, 4 val) with official-format ground truth."""
    return _require(shared_dir / "data" / "widerface-sample")


@pytest.fixture(scope="session")
def weights(shared_dir: Path) -> Path:
    """The default FaceBoxes checkpoint (FaceBoxes.PyTorch layout)."""
    return _require(shared_dir / "weights" / "faceboxes" / "FaceBoxes.pth")


@pytest.fixture(scope="session")
def alt_weights(shared_dir: Path) -> Path:
    """The second checkpoint, whose parameter names need a key mapping."""
    return _require(shared_dir / "weights" / "faceboxes" / "faceboxes_alt.pth")


@pytest.fixture(scope="session")
def faceboxes(weights: Path):  # type: ignore[no-untyped-def]
    """FaceBoxes with real weights, loaded once per session (read-only use in tests)."""
    from veil.models import create_model

    return create_model("faceboxes", weights)


@pytest.fixture(scope="session")
def mask_scenes(shared_dir: Path) -> Path:
    """552 real street scenes with 2,128 face boxes in FDDB layout."""
    return _require(shared_dir / "data" / "mask-scenes")
