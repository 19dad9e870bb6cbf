"""``veil demo --task breast-cancer-mlp``: the 171 test rows' releases through one real Triton.

The private predictions are exactly what the local tail gives on the very releases that were sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import veil
from conftest import run_veil
from veil.demo_tabular import PICTURE, report, run_tabular_demo
from veil.tabular.data import rows
from veil.tabular.model import build
from veil.tabular.shipped import default_transform

pytest.importorskip("sklearn")

#: Floor for the private accuracy on the test rows (docs/tabular.md: 0.9591 +- 0.0028 over 10 draws).
PRIVATE_FLOOR = 0.9


@pytest.mark.slow
def test_the_test_rows_through_triton(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    r = run_tabular_demo(out)
    printed = capsys.readouterr().out
    assert "serving " in printed and "Stopping Triton" in printed
    data = rows("test")
    assert len(r.y) == len(data.y) == 171 and np.array_equal(r.y, data.y)
    # only releases left: one 64-wide float32 vector per row, never the 30 raw columns
    assert r.sent.shape == (171, 64) and r.sent.dtype == np.float32
    transform = default_transform()
    assert transform is not None and r.transform == transform and r.alpha == pytest.approx(0.6)
    q = veil.load(transform, build())
    with torch.inference_mode():
        local = q.tail(torch.from_numpy(r.sent)).argmax(1).numpy()
        clean = build()(torch.from_numpy(data.x)).argmax(1).numpy()
    assert np.array_equal(local, r.private)  # Triton's tail == the local tail on the same releases
    assert np.array_equal(clean, r.clean)
    private_acc = float((local == data.y).mean())
    assert r.metrics["private"]["accuracy"] == private_acc >= PRIVATE_FLOOR
    assert r.metrics["clean"]["accuracy"] == pytest.approx(0.9766, abs=1e-3)  # docs/tabular.md
    text = report(r)
    assert "row 0: true " in text and ", private " in text
    assert "balanced" in text and "recall malignant" in text and "recall benign" in text
    assert (out / PICTURE).stat().st_size > 10_000


def test_unknown_task_lists_the_three(tmp_path: Path) -> None:
    res = run_veil("demo", "--task", "cats", "-o", str(tmp_path))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "faceboxes, mask-compliance or breast-cancer-mlp" in res.stderr
