"""The transforms that ship with veil: they load for FaceBoxes.pth and keep accuracy on real scenes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from veil.artifact import load_transform
from veil.faceboxes.data import LabeledDataset, load_dataset
from veil.faceboxes.detect import Detector
from veil.faceboxes.eval.runner import DrawSummary, evaluate_draws
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.shipped import SHIPPED_DIR, shipped_transforms
from veil.imageio import Batch, load_image


class HeadOnce:
    """``det.detect`` with each image's preprocessing and head run once, its noise and tail on every call.

    Everything before the noise is deterministic, so a call differs from ``det.detect`` only by its fresh
    noise sample, which is what the draws average over: the first draw pays for the resize and the head
    (about 80 % of an image's CPU time at 1024²), the later ones only for noise, tail and NMS. The
    post-processing reads only the batch's shape and sizes, so a cached batch keeps a stride-0 stand-in for
    its pixels (about 0.5 MB of activation kept per image).
    """

    def __init__(self, det: Detector) -> None:
        self.det = det
        self.cache: dict[bytes, tuple[Tensor, Batch]] = {}
        self.hits = 0

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[Tensor]:
        det, out = self.det, []
        for img in images:
            key = hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() + repr(img.shape).encode()
            if key in self.cache:
                self.hits += 1
            else:
                batch = det.preprocess([img])
                shape = batch.tensor.new_zeros(()).expand(batch.tensor.shape)
                self.cache[key] = (
                    det.head(batch.tensor),
                    Batch(shape, batch.original_sizes, batch.resized_sizes),
                )
            act, batch = self.cache[key]
            loc, conf = det.tail(det.noise(act) if det.noise is not None else act)
            out.extend(det.post(loc, conf, batch))
        return out


@pytest.fixture(scope="module")
def scenes(weights: Path, mask_scenes: Path) -> tuple[LabeledDataset, float]:
    """The held-out half of mask-scenes (the shipped transforms trained on the other) and its clean AP."""
    data = load_dataset(mask_scenes).part("test")
    clean = load_pipeline(weights)
    once = HeadOnce(clean)
    for img in data.images[:2]:  # one image a call, as evaluate_draws sends them
        photo = [load_image(img.path)]
        assert torch.equal(clean.detect(photo)[0], once(photo)[0])  # the cached path is detect's own
    return data, evaluate_draws(data, clean.detect, draws=1, progress=False)[0].mean.pooled_ap


def _draws(data: LabeledDataset, det: Detector, draws: int) -> DrawSummary:
    """``evaluate_draws`` of ``det.detect`` on ``data``, fresh noise per draw, the head once per image."""
    once = HeadOnce(det)
    summary, _ = evaluate_draws(data, once, draws=draws, progress=False)
    assert once.hits == (draws - 1) * len(data.images)  # every later draw reused the first's activations
    return summary


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
def test_smallest_alpha_keeps_ap_on_mask_scenes(weights: Path, scenes: tuple[LabeledDataset, float]) -> None:
    data, clean = scenes
    smallest = min(shipped_transforms())
    noisy = load_pipeline(weights, shipped_transforms()[smallest])
    # One draw moves by ~0.007 AP (fresh noise); six put the mean's spread well inside the 0.03 margin.
    summary = _draws(data, noisy, draws=6)
    assert summary.mean.pooled_ap >= clean - 0.03, (clean, summary.pooled.tolist())


@pytest.mark.slow
def test_reference_split_beats_the_reference_retention(
    weights: Path, scenes: tuple[LabeledDataset, float]
) -> None:
    """The reference design kept 94.7 % of its AP at α = 0.8 after RDCL; the shipped RDCL file must beat it.

    On the held-out street scenes one draw moves by ~1.8 % of clean AP, so the mean of three sits well clear
    of the line when the file keeps its measured ~97 %. (WIDER's 10 images move ~3.6 % a draw: the README
    measures it over 24 draws instead.)
    """
    data, clean = scenes
    path = SHIPPED_DIR / "faceboxes-rdcl-alpha0.8"
    assert load_transform(path, weights).split == "rdcl"
    summary = _draws(data, load_pipeline(weights, path), draws=3)
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
