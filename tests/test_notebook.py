"""The Jupyter scenario: the example notebook runs end to end with a real kernel (nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "on_demand_inference.ipynb"


@pytest.mark.slow
def test_notebook_runs(shared_dir: Path, tmp_path: Path) -> None:
    from veil.artifact import shipped_transforms

    if not shipped_transforms():
        pytest.skip("no shipped transforms in this checkout")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["VEIL_SHARED"] = str(shared_dir)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "retained" in outputs
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 3  # clean boxes, clean vs obfuscated, what leaves the machine
