"""The transforms that ship with veil: they load for FaceBoxes.pth and keep accuracy on real scenes."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.artifact import load_transform
from veil.faceboxes.data import load_dataset
from veil.faceboxes.eval.runner import evaluate_draws
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.shipped import SHIPPED_DIR, shipped_transforms


def test_shipped_set_is_complete_and_small() -> None:
    default = shipped_transforms()
    assert {0.2, 0.5, 0.8} <= set(default)
    total = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 2**20
    names = {meta.parent.name for meta in SHIPPED_DIR.glob("*/transform.json")}
    assert "faceboxes-rdcl-alpha0.8" in names  # the reference-design-compatible split
    assert shipped_transforms(include_all=True)[0.8] == default[0.8]  # the default wins a shared alpha


def test_shipped_transforms_verify_against_the_weights(weights: Path) -> None:
    sigmas = []
    for alpha, path in sorted(shipped_transforms().items()):
        tr = load_transform(path, weights)
        assert tr.alpha == alpha and tr.split == "inception3" and tr.tail_state is not None
        sigmas.append(float(tr.noise.mean_sigma()))
    assert sigmas == sorted(sigmas) and sigmas[0] < sigmas[-1]  # mean sigma rises with alpha


@pytest.mark.slow
def test_smallest_alpha_keeps_ap_on_mask_scenes(weights: Path, mask_scenes: Path) -> None:
    data = load_dataset(mask_scenes).part("test")  # the shipped transforms trained on the other half
    clean = evaluate_draws(data, load_pipeline(weights).detect, draws=1, progress=False)[0].mean.pooled_ap
    smallest = min(shipped_transforms())
    noisy = load_pipeline(weights, shipped_transforms()[smallest])
    # One draw moves by ~0.007 AP (fresh noise); six put the mean's spread well inside the 0.03 margin.
    summary, _ = evaluate_draws(data, noisy.detect, draws=6, progress=False)
    assert summary.mean.pooled_ap >= clean - 0.03, (clean, summary.pooled.tolist())


@pytest.mark.slow
def test_reference_split_beats_the_reference_retention(weights: Path, mask_scenes: Path) -> None:
    """The reference design kept 94.7 % of its AP at α = 0.8 after RDCL; the shipped RDCL file must beat it.

    On the held-out street scenes one draw moves by ~1.8 % of clean AP, so the mean of three sits well clear
    of the line when the file keeps its measured ~97 %. (WIDER's 10 images move ~3.6 % a draw: the README
    measures it over 24 draws instead.)
    """
    data = load_dataset(mask_scenes).part("test")
    clean = evaluate_draws(data, load_pipeline(weights).detect, draws=1, progress=False)[0].mean.pooled_ap
    path = SHIPPED_DIR / "faceboxes-rdcl-alpha0.8"
    assert load_transform(path, weights).split == "rdcl"
    summary, _ = evaluate_draws(data, load_pipeline(weights, path).detect, draws=3, progress=False)
    assert summary.mean.pooled_ap >= 0.947 * clean, (clean, summary.pooled.tolist())


def test_evaluate_shipped_only_reads_back_the_earlier_rows(tmp_path: Path) -> None:
    """scripts/evaluate_shipped.py --only: rows it does not re-measure come back exactly as written."""
    from conftest import load_script
    from veil.sweep import SweepRow, write_report

    module = load_script("evaluate_shipped")
    rows = [
        SweepRow(None, 0.5, 0.0, 1.0, 0.0, float("inf"), None),
        SweepRow(0.12, 0.49, 0.006, 0.98, 1.0, -13.7, "faceboxes-inception3-alpha0.12"),
        SweepRow(0.8, 0.44, 0.005, 0.89, 4.1, -7.0, "faceboxes-rdcl-alpha0.8"),
    ]
    write_report(rows, tmp_path / "set", "t")
    kept = module._previous(tmp_path / "set" / "sweep.json")
    assert kept == {"": rows[0], rows[1].transform: rows[1], rows[2].transform: rows[2]}
    with pytest.raises(SystemExit, match="run without --only"):
        module._previous(tmp_path / "other" / "sweep.json")
