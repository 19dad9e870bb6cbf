"""Hand-computed cases for VOC AP and greedy detection matching."""

from __future__ import annotations

import numpy as np
import pytest

from veil.faceboxes.eval.ap import (
    ap_details,
    average_precision,
    box_iou,
    match_detections,
    voc_ap,
    wider_style_ap,
)

GT2 = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])


def det(box: np.ndarray | list[float], score: float) -> list[float]:
    return [*map(float, box), score]


def test_voc_ap_hand_computation() -> None:
    recall = np.array([0.25, 0.25, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 2 / 3, 0.6])
    # Envelope over recall steps 0→.25→.5→.75: 1.0, 2/3, 0.6.
    expected = 0.25 * 1.0 + 0.25 * (2 / 3) + 0.25 * 0.6
    assert voc_ap(recall, precision) == pytest.approx(expected, abs=1e-15)
    assert voc_ap(np.array([1.0]), np.array([1.0])) == 1.0
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_box_iou_matches_hand_values() -> None:
    iou = box_iou(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([[5.0, 0.0, 15.0, 10.0], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])


def test_perfect_detections_give_ap_one() -> None:
    dets = [np.array([det(GT2[0], 0.9), det(GT2[1], 0.8)]), np.array([det([5, 5, 25, 25], 0.7)])]
    gts = [GT2, np.array([[5.0, 5.0, 25.0, 25.0]])]
    assert average_precision(dets, gts) == 1.0


def test_no_detections_and_no_gt_give_zero() -> None:
    assert average_precision([np.zeros((0, 5))], [GT2]) == 0.0
    assert average_precision([], []) == 0.0
    assert average_precision([np.array([det(GT2[0], 0.9)])], [np.zeros((0, 4))]) == 0.0


def test_duplicate_is_false_positive() -> None:
    dets = np.array([det(GT2[0], 0.9), det(GT2[0] + 0.5, 0.8), det(GT2[1], 0.7)])
    res = ap_details([dets], [GT2])
    np.testing.assert_array_equal(res.tp, [1, 1, 2])
    np.testing.assert_array_equal(res.fp, [0, 1, 1])
    np.testing.assert_allclose(res.precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(res.recall, [0.5, 0.5, 1.0])
    assert res.ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3), abs=1e-15)
    assert res.num_gt == 2 and res.num_det == 3


def test_low_iou_detection_is_false_positive() -> None:
    # IoU with GT2[0] is 50/150 < 0.5.
    _, is_tp, is_ign = match_detections(np.array([det([5, 0, 15, 10], 0.9)]), GT2)
    assert not is_tp[0] and not is_ign[0]
    dets = np.array([det([5, 0, 15, 10], 0.9), det(GT2[0], 0.8), det(GT2[1], 0.7)])
    # PR: (r .0, p 0), (.5, .5), (1, 2/3) → envelope 2/3 over the whole recall range.
    assert average_precision([dets], [GT2]) == pytest.approx(2 / 3, abs=1e-15)


def test_match_sorts_by_score_and_picks_best_unmatched() -> None:
    gts = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    dets = np.array([det([1, 0, 11, 10], 0.5), det([0, 0, 10, 10], 0.9)])
    scores, is_tp, _ = match_detections(dets, gts)
    np.testing.assert_array_equal(scores, [0.9, 0.5])
    # The 0.9 box takes GT 0 (IoU 1); the 0.5 box still finds GT 1 unmatched (IoU 1).
    np.testing.assert_array_equal(is_tp, [True, True])


def test_ignored_gt_neither_tp_nor_fp() -> None:
    ignore = np.array([False, True])
    dets = np.array([det(GT2[0], 0.9), det(GT2[1], 0.95), det(GT2[1], 0.92)])
    scores, is_tp, is_ign = match_detections(dets, GT2, ignore=ignore)
    np.testing.assert_array_equal(scores, [0.95, 0.92, 0.9])
    np.testing.assert_array_equal(is_tp, [False, False, True])
    np.testing.assert_array_equal(is_ign, [True, True, False])
    res = ap_details([dets], [GT2], ignore=[ignore])
    assert res.num_gt == 1 and res.num_ignored == 2
    assert res.ap == 1.0
    # Without the flag the 0.92 box is a duplicate (FP) before the last TP.
    assert average_precision([dets], [GT2]) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)


def test_ignore_list_may_mix_none() -> None:
    dets = [np.array([det(GT2[0], 0.9)]), np.array([det(GT2[1], 0.8)])]
    ap = average_precision(dets, [GT2[:1], GT2[1:]], ignore=[None, np.array([True])])
    assert ap == 1.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="one per image"):
        average_precision([np.zeros((0, 5))], [])
    with pytest.raises(ValueError, match="ignore has"):
        match_detections(np.array([det(GT2[0], 0.9)]), GT2, ignore=np.array([True]))


def test_wider_style_ap_reference_quirks() -> None:
    dets = np.array([det(GT2[0], 0.9), det(GT2[0], 0.8), det(GT2[1], 0.7)])
    # Same PR points as the pooled AP here: (.5, 1), (.5, .5), (1, 2/3).
    assert wider_style_ap([dets], [GT2]) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert wider_style_ap([np.zeros((0, 5))], [GT2]) == 0.0
    # +1 pixel areas: a 1-pixel shift keeps IoU (11*10)/(11*12) = 0.833 >= 0.5.
    assert wider_style_ap([np.array([det([1, 0, 11, 10], 0.5)])], [GT2[:1]]) > 0.0
