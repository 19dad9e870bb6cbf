"""FDDB ellipse overlap geometry and ROC bookkeeping, checked against brute force."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from veil.faceboxes.eval.fddb_roc import (
    ellipse_bounding_boxes,
    ellipse_polygons,
    ellipse_rect_overlap,
    fddb_roc,
)

roc_mod = importlib.import_module("veil.faceboxes.eval.fddb_roc")
ELL = np.array([[40.0, 25.0, 0.7, 100.0, 80.0]])  # rotated by 0.7 rad


def _grid_overlap(rect: list[float], e: np.ndarray, step: float = 0.05) -> float:
    """Dense-grid IoU of a rectangle and an ellipse (cell centres, 4000 x 4000 cells)."""
    a, b, phi, cx, cy = e
    xs = np.arange(0.0, 200.0, step) + step / 2
    x, y = np.meshgrid(xs, xs, sparse=True)
    u = (x - cx) * math.cos(phi) + (y - cy) * math.sin(phi)
    v = -(x - cx) * math.sin(phi) + (y - cy) * math.cos(phi)
    in_e = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    in_r = (x >= rect[0]) & (x <= rect[2]) & (y >= rect[1]) & (y <= rect[3])
    return float((in_e & in_r).sum() / (in_e | in_r).sum())


@pytest.mark.parametrize(
    "rect", [[90.0, 60.0, 150.0, 120.0], [60.0, 40.0, 100.0, 80.0], [95.0, 75.0, 105.0, 85.0]]
)
def test_rotated_overlap_matches_dense_grid(rect: list[float]) -> None:
    exact = ellipse_rect_overlap(np.array([rect]), ELL)[0, 0]
    assert exact == pytest.approx(_grid_overlap(rect, ELL[0]), abs=1e-3)


def test_overlap_with_own_bounding_rectangle_is_area_ratio() -> None:
    box = ellipse_bounding_boxes(ELL)[0]
    expected = math.pi * 40 * 25 / ((box[2] - box[0]) * (box[3] - box[1]))
    assert ellipse_rect_overlap(box[None], ELL)[0, 0] == pytest.approx(expected, rel=1e-12)
    # A rectangle inside the ellipse: ratio = rect area / ellipse area.
    inner = np.array([[98.0, 78.0, 102.0, 82.0]])
    assert ellipse_rect_overlap(inner, ELL)[0, 0] == pytest.approx(16 / (math.pi * 1000), rel=1e-12)


def test_polygons_lie_on_ellipse_inside_bounding_box() -> None:
    poly = ellipse_polygons(ELL, 64)[0]
    a, b, phi, cx, cy = ELL[0]
    u = (poly[:, 0] - cx) * math.cos(phi) + (poly[:, 1] - cy) * math.sin(phi)
    v = -(poly[:, 0] - cx) * math.sin(phi) + (poly[:, 1] - cy) * math.cos(phi)
    np.testing.assert_allclose((u / a) ** 2 + (v / b) ** 2, 1.0, atol=1e-12)
    box = ellipse_bounding_boxes(ELL)[0]
    assert poly[:, 0].min() >= box[0] - 1e-9 and poly[:, 0].max() <= box[2] + 1e-9


def test_disjoint_pairs_are_zero() -> None:
    assert ellipse_rect_overlap(np.array([[300.0, 300.0, 310.0, 310.0]]), ELL)[0, 0] == 0.0
    assert ellipse_rect_overlap(np.zeros((0, 4)), ELL).shape == (0, 1)


def _faces(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.array([[30.0, 20.0, rng.uniform(-1.5, 1.5), 60.0 + 100 * i, 60.0]]) for i in range(n)]


def test_perfect_detections() -> None:
    ells = _faces(3)
    dets = [np.concatenate([ellipse_bounding_boxes(e), [[0.9]]], axis=1) for e in ells]
    roc = fddb_roc(dets, ells)
    np.testing.assert_array_equal(roc.fp, [0])
    np.testing.assert_array_equal(roc.tpr_discrete, [1.0])
    assert roc.tpr_at(0) == 1.0 and roc.num_faces == 3 and roc.num_det == 3
    expected = np.mean([ellipse_rect_overlap(d[:, :4], e)[0, 0] for d, e in zip(dets, ells, strict=True)])
    assert roc.tpr_continuous[0] == pytest.approx(expected)


def test_no_detections_gives_empty_roc() -> None:
    roc = fddb_roc([np.zeros((0, 5))], _faces(1))
    assert roc.fp.size == 0 and roc.tpr_discrete.size == 0 and roc.thresholds.size == 0
    assert roc.tpr_at(1000) == 0.0 and roc.tpr_at(1000, "continuous") == 0.0
    d = roc.to_dict()
    assert d["num_faces"] == 1 and d["num_det"] == 0 and d["curve"]["fp"] == []
    assert fddb_roc([], []).num_faces == 0


def test_one_detection_matches_one_of_two_ellipses() -> None:
    e = np.array([[30.0, 20.0, 0.0, 60.0, 60.0], [30.0, 20.0, 0.0, 62.0, 60.0]])  # near-duplicates
    rect = ellipse_bounding_boxes(e[:1])
    ov = ellipse_rect_overlap(rect, e)[0]
    assert (ov > 0.5).all()
    roc = fddb_roc([np.concatenate([rect, [[0.8]]], axis=1)], [e])
    assert roc.fp.tolist() == [0]
    assert roc.tpr_discrete[0] == 0.5
    assert roc.tpr_continuous[0] == pytest.approx(ov.max() / 2)


def test_tpr_at_and_ties() -> None:
    ells = _faces(2)
    b0, b1 = ellipse_bounding_boxes(ells[0])[0], ellipse_bounding_boxes(ells[1])[0]
    far = [500.0, 500.0, 520.0, 520.0]
    dets = [
        np.array([[*b0, 0.9], [*far, 0.8], [*far, 0.7], [*far, 0.7]]),
        np.array([[*b1, 0.6], [*far, 0.5]]),
    ]
    roc = fddb_roc(dets, ells)
    np.testing.assert_array_equal(roc.thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])  # tied 0.7s: one point
    np.testing.assert_array_equal(roc.fp, [0, 1, 3, 3, 4])
    np.testing.assert_array_equal(roc.tpr_discrete, [0.5, 0.5, 0.5, 1.0, 1.0])
    assert roc.tpr_at(0) == 0.5
    assert roc.tpr_at(2) == 0.5
    assert roc.tpr_at(3) == 1.0
    assert roc.tpr_at(1000) == 1.0
    summary = roc.to_dict()
    assert summary["tpr_at_1000"]["discrete"] == 1.0 and summary["curve"]["fp"] == [0, 1, 3, 3, 4]


def test_thresholded_vs_official_matching() -> None:
    # A beats B on face 1 (0.6 vs 0.45) but A+face2 / B+face1 has more total overlap (0.75).
    ov = np.array([[0.6, 0.3], [0.45, 0.0]])
    disc, cont = roc_mod._prefix_scores(ov, "thresholded")
    np.testing.assert_allclose(disc, [1, 1])
    np.testing.assert_allclose(cont, [0.6, 0.75])
    disc, cont = roc_mod._prefix_scores(ov, "official")
    np.testing.assert_allclose(disc, [1, 0])
    np.testing.assert_allclose(cont, [0.6, 0.75])


def _random_scene(seed: int, n_img: int = 30) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    dets, ells = [], []
    for _ in range(n_img):
        n = int(rng.integers(0, 4))
        radii = [rng.uniform(15, 30, n), rng.uniform(10, 15, n)]
        e = np.stack([*radii, rng.uniform(-1.6, 1.6, n), rng.uniform(30, 120, n), rng.uniform(30, 120, n)], 1)
        boxes = ellipse_bounding_boxes(e)
        m = int(rng.integers(0, 12))
        k = rng.integers(0, max(n, 1), m)
        near = boxes[k] + rng.normal(0, 6, (m, 4)) if n else rng.uniform(0, 150, (m, 4))
        rand = rng.uniform(0, 150, (m, 2))
        rand = np.concatenate([rand, rand + rng.uniform(10, 40, (m, 2))], axis=1)
        boxes_d = np.where(rng.uniform(size=(m, 1)) < 0.6, near, rand)
        boxes_d[:, 2:] = np.maximum(boxes_d[:, 2:], boxes_d[:, :2] + 1)
        scores = np.round(rng.uniform(0, 1, (m, 1)), 1)  # coarse scores: plenty of ties
        dets.append(np.concatenate([boxes_d, scores], axis=1))
        ells.append(e)
    return dets, ells


def _brute_force(dets: list[np.ndarray], ells: list[np.ndarray], thr: float) -> tuple[float, float, int]:
    """Re-match every image from scratch at one threshold (thresholded discrete matching)."""
    tp_d = tp_c = 0.0
    fp = 0
    for d, e in zip(dets, ells, strict=True):
        kept = d[d[:, 4] >= thr]
        ov = ellipse_rect_overlap(kept[:, :4], e)
        disc = cont = 0.0
        if ov.size:
            r, c = linear_sum_assignment(ov, maximize=True)
            cont = ov[r, c].sum()
            el = (ov > 0.5).astype(float)
            r, c = linear_sum_assignment(el, maximize=True)
            disc = el[r, c].sum()
        tp_d += disc
        tp_c += cont
        fp += len(kept) - int(disc)
    return tp_d, tp_c, fp


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_roc_matches_brute_force_and_is_monotone(seed: int) -> None:
    dets, ells = _random_scene(seed)
    roc = fddb_roc(dets, ells)
    faces = sum(len(e) for e in ells)
    assert roc.num_faces == faces and roc.num_det == sum(len(d) for d in dets)
    assert np.all(np.diff(roc.thresholds) < 0)
    assert np.all(np.diff(roc.fp) >= 0)
    assert np.all(np.diff(roc.tpr_discrete) >= 0)
    assert np.all(np.diff(roc.tpr_continuous) >= -1e-12)
    for i, thr in enumerate(roc.thresholds):
        tp_d, tp_c, fp = _brute_force(dets, ells, float(thr))
        assert roc.fp[i] == fp
        assert roc.tpr_discrete[i] == pytest.approx(tp_d / faces)
        assert roc.tpr_continuous[i] == pytest.approx(tp_c / faces)


def test_to_dict_downsamples() -> None:
    rng = np.random.default_rng(0)
    dets = [
        np.concatenate(
            [rng.uniform(0, 50, (500, 2)), rng.uniform(60, 90, (500, 2)), rng.uniform(size=(500, 1))], 1
        )
    ]
    roc = fddb_roc(dets, _faces(1))
    d = roc.to_dict()
    assert roc.fp.size == 500 and len(d["curve"]["fp"]) == 200
    assert d["curve"]["fp"][-1] == int(roc.fp[-1]) and d["curve"]["thresholds"][0] == float(roc.thresholds[0])


def test_length_and_mode_checks() -> None:
    with pytest.raises(ValueError):
        fddb_roc([np.zeros((0, 5))], [])
    with pytest.raises(ValueError):
        fddb_roc([], [], matching="bogus")  # type: ignore[arg-type]
