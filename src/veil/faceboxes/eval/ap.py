"""Average precision for face detection, PASCAL VOC style.

Protocol (one IoU threshold, default 0.5):

* Per image, detections are visited in descending score order (stable) and each is greedily matched
  to the *unmatched*, non-ignored ground-truth box with the highest IoU, if that IoU >= threshold.
  A detection whose only candidates are already matched is a false positive (duplicates count as FP).
* Ignored ground truth (WIDER "invalid" faces): a detection that finds no valid match but overlaps an
  ignored box at >= threshold is dropped (neither TP nor FP); ignored boxes may absorb any number of
  detections and are not part of the recall denominator. Valid boxes are preferred over ignored ones.
* All images' detections are pooled and sorted by score (stable), cumulative TP/FP give the
  precision/recall curve and :func:`voc_ap` integrates it (all-point interpolation).
* Box areas use continuous pixel coordinates, ``(x2 - x1) * (y2 - y1)`` (no ``+1``), as
  ``torchvision.ops.box_iou`` does.

Edge cases: no (non-ignored) ground truth at all gives AP 0.0 (nothing can be recalled, and returning
NaN would poison fold averages); no detections gives AP 0.0.

:func:`wider_style_ap` additionally reproduces the evaluator that produced the reference FDDB logs
(RuisongZhou/FDDB_Evaluation, derived from the WIDER FACE evaluation), whose numbers differ slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "APResult",
    "ap_details",
    "average_precision",
    "box_iou",
    "match_detections",
    "voc_ap",
    "wider_style_ap",
]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+): area under the precision envelope."""
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.size == 0:
        return 0.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # Envelope: precision at recall r is the best precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU matrix [M, N] of x1,y1,x2,y2 boxes; ``plus_one`` uses the legacy inclusive-pixel areas."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    off = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + off) * (a[:, 3] - a[:, 1] + off)
    area_b = (b[:, 2] - b[:, 0] + off) * (b[:, 3] - b[:, 1] + off)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + off
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + off
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _as_dets(detections: np.ndarray) -> np.ndarray:
    return np.asarray(detections, dtype=np.float64).reshape(-1, 5)


def match_detections(
    detections: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float = 0.5,
    ignore: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-image matching; returns (scores, is_tp, is_ignored), all in descending score order."""
    dets = _as_dets(detections)
    gts = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-dets[:, 4], kind="stable")
    dets = dets[order]
    scores = dets[:, 4].copy()
    is_tp = np.zeros(len(dets), dtype=bool)
    is_ignored = np.zeros(len(dets), dtype=bool)
    if len(dets) == 0 or len(gts) == 0:
        return scores, is_tp, is_ignored
    ign = np.zeros(len(gts), dtype=bool) if ignore is None else np.asarray(ignore, dtype=bool).reshape(-1)
    if ign.shape[0] != len(gts):
        raise ValueError(f"ignore has {ign.shape[0]} flags for {len(gts)} ground-truth boxes")
    iou = box_iou(dets[:, :4], gts)
    eligible = iou >= iou_threshold
    valid = ~ign
    free = valid.copy()  # valid GT not yet matched
    # Only detections that reach the threshold somewhere need the sequential loop; the rest are FP.
    for r in np.nonzero(eligible.any(axis=1))[0]:
        cand = eligible[r] & free
        if cand.any():
            j = int(np.argmax(np.where(cand, iou[r], -1.0)))
            free[j] = False
            is_tp[r] = True
        elif (eligible[r] & ign).any():
            is_ignored[r] = True
    return scores, is_tp, is_ignored


@dataclass(frozen=True)
class APResult:
    """AP with the pooled curve behind it (cumulative counts over detections in score order)."""

    ap: float
    num_gt: int
    num_det: int
    num_ignored: int
    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def _check_lengths(n_det: int, n_gt: int, ignore: Sequence[np.ndarray | None] | None) -> None:
    if n_det != n_gt:
        raise ValueError(f"{n_det} detection arrays but {n_gt} ground-truth arrays; one per image")
    if ignore is not None and len(ignore) != n_gt:
        raise ValueError(f"{len(ignore)} ignore arrays for {n_gt} images")


def ap_details(
    detections: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    ignore: Sequence[np.ndarray | None] | None = None,
) -> APResult:
    """Match every image, pool the detections and build the PR curve; see the module docstring."""
    _check_lengths(len(detections), len(gt_boxes), ignore)
    all_scores: list[np.ndarray] = []
    all_tp: list[np.ndarray] = []
    all_ign: list[np.ndarray] = []
    num_gt = 0
    for i, (dets, gts) in enumerate(zip(detections, gt_boxes, strict=True)):
        ign = None if ignore is None else ignore[i]
        scores, is_tp, is_ign = match_detections(dets, gts, iou_threshold, ign)
        all_scores.append(scores)
        all_tp.append(is_tp)
        all_ign.append(is_ign)
        n = np.asarray(gts).reshape(-1, 4).shape[0]
        num_gt += n if ign is None else n - int(np.count_nonzero(np.asarray(ign, dtype=bool)))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp_flags = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    ign_flags = np.concatenate(all_ign) if all_ign else np.zeros(0, dtype=bool)
    num_det = int(scores.size)
    keep = ~ign_flags
    scores, tp_flags = scores[keep], tp_flags[keep]
    order = np.argsort(-scores, kind="stable")
    scores, tp_flags = scores[order], tp_flags[order]
    tp = np.cumsum(tp_flags, dtype=np.int64)
    fp = np.cumsum(~tp_flags, dtype=np.int64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_gt if num_gt > 0 else np.zeros(tp.shape)
    ap = voc_ap(recall, precision) if num_gt > 0 and scores.size > 0 else 0.0
    return APResult(
        ap=ap,
        num_gt=num_gt,
        num_det=num_det,
        num_ignored=int(np.count_nonzero(ign_flags)),
        scores=scores,
        tp=tp,
        fp=fp,
        precision=precision,
        recall=recall,
    )


def average_precision(
    detections: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    ignore: Sequence[np.ndarray | None] | None = None,
) -> float:
    """Pooled VOC AP over a set of images (0.0 when there is no ground truth or no detection)."""
    return ap_details(detections, gt_boxes, iou_threshold, ignore).ap


def wider_style_ap(
    detections: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    thresh_num: int = 1000,
) -> float:
    """AP exactly as the reference FDDB evaluator computes it (for comparing with its logs).

    Differences from :func:`average_precision`: IoU uses inclusive ``+1`` pixel areas; each detection
    only looks at its single best-IoU box, so a GT counts once however many detections hit it; the
    PR curve is sampled at ``thresh_num`` score thresholds ``1 - (t + 1) / thresh_num`` with
    precision = (GT recalled) / (detections kept); images without detections still add their faces.
    """
    _check_lengths(len(detections), len(gt_boxes), None)
    proposals = np.zeros(thresh_num)
    recalled = np.zeros(thresh_num)
    count_face = 0
    thresholds = 1.0 - (np.arange(thresh_num) + 1.0) / thresh_num
    for dets_in, gts_in in zip(detections, gt_boxes, strict=True):
        gts = np.asarray(gts_in, dtype=np.float64).reshape(-1, 4)
        dets = _as_dets(dets_in)
        count_face += len(gts)
        if len(gts) == 0 or len(dets) == 0:
            continue
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        iou = box_iou(dets[:, :4], gts, plus_one=True)
        best = np.argmax(iou, axis=1)
        hit = iou[np.arange(len(dets)), best] >= iou_threshold
        # GT recalled within the first k detections = number of distinct boxes first hit by then.
        first_hit = np.full(len(gts), len(dets), dtype=np.int64)
        np.minimum.at(first_hit, best[hit], np.nonzero(hit)[0])
        first_hit.sort()
        n_keep = np.searchsorted(-dets[:, 4], -thresholds, side="right")  # dets with score >= thr
        proposals += n_keep
        recalled += np.searchsorted(first_hit, n_keep, side="left")
    if count_face == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = recalled / proposals
    return voc_ap(recalled / count_face, precision)
