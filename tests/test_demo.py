"""`veil demo`, the README's main job: Triton + client, clean vs obfuscated, table and pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchvision.io import decode_png, read_file
from typer.testing import CliRunner

from veil.artifact import shipped_transforms
from veil.cli.main import app


@pytest.mark.slow
def test_demo_prints_table_and_writes_pictures(weights: Path, fddb_sample: Path, tmp_path: Path) -> None:
    shipped = shipped_transforms()
    if not shipped:
        pytest.skip("no shipped transforms")
    transform = shipped[min(shipped)]
    out = tmp_path / "demo"
    args = ["demo", "--weights", str(weights), "--dataset", str(fddb_sample), "--transform", str(transform)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--draws", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    clean = next(line for line in lines if line.startswith("no "))
    noisy = next(line for line in lines if line.startswith("yes "))
    assert "0.9091" in clean  # the clean run through Triton equals local inference
    retained = float(noisy.split()[-1].rstrip("%"))
    assert retained >= 90.0
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 7  # one per FDDB sample image
    png = decode_png(read_file(str(pictures[0])))
    assert png.shape[0] == 3 and png.shape[2] > 2 * png.shape[1]  # three panels side by side
    assert "inferences" in result.output  # Triton's own statistics were read back
