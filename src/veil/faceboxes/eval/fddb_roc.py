"""FDDB ROC curves (Jain & Learned-Miller, UM-CS-2010-009), computed geometrically.

Protocol, as in the official ``evaluate`` program (Matching.cpp / Results.cpp):

* Overlap of a detection rectangle d and an annotated ellipse e is area(d ∩ e) / area(d ∪ e).
  The official tool counts pixels on rasterised masks; here the intersection is exact: an affine
  map turns the ellipse into the unit disc and the rectangle into a parallelogram, whose area of
  intersection with the disc is a sum over its 4 edges of signed disc ∩ triangle areas (sector +
  chord triangle + sector), vectorised over every candidate pair. Pairs whose bounding boxes do
  not intersect have overlap 0. Regions are not clipped to the image borders.
  Ellipses are (major_radius, minor_radius, angle_rad, cx, cy), angle of the major axis from +x in
  image coordinates (y down), the FDDB / OpenCV convention.
* Per image and score threshold, the detections scoring >= threshold are matched one-to-one to
  ellipses with maximum-weight bipartite matching (``scipy.optimize.linear_sum_assignment``):
  - continuous score: weights are all positive overlaps, TP = sum of matched overlaps;
  - discrete score (default ``matching="thresholded"``): only pairs with overlap > 0.5 are eligible
    and the largest number of them is matched, TP = that number. ``matching="official"`` instead
    counts the pairs > 0.5 inside the continuous matching, exactly like Results.cpp; the two differ
    only in contrived cases, but "thresholded" makes TP and FP provably monotone in the threshold.
  - false positives = detections kept - discrete TP (one FP axis for both curves, as officially).
* TPR = TP / number of annotated faces over all images; points are emitted at every distinct score,
  from the highest down (``thresholds``), so each point includes all detections with score >= it.

Efficiency: detections of one image are taken in descending score order; the matching only changes
when the added detection overlaps some ellipse, so the per-image TP counts are recomputed only at
those prefixes and carried forward otherwise. Each detection then carries a (ΔTP, ΔFP) and a stable
global sort by score plus a cumulative sum gives the exact ROC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["FddbRoc", "ellipse_bounding_boxes", "ellipse_polygons", "ellipse_rect_overlap", "fddb_roc"]

Kind = Literal["discrete", "continuous"]
Matching = Literal["thresholded", "official"]
_EPS = 1e-12


def ellipse_polygons(ellipses: np.ndarray, n_vertices: int = 256) -> np.ndarray:
    """Polygons [N, V, 2] on the ellipse boundaries, counter-clockwise in (x, y); for drawing/tests."""
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    theta = np.arange(n_vertices) * (2.0 * np.pi / n_vertices)
    u = e[:, 0:1] * np.cos(theta)[None, :]
    v = e[:, 1:2] * np.sin(theta)[None, :]
    c, s = np.cos(e[:, 2:3]), np.sin(e[:, 2:3])
    return np.stack([e[:, 3:4] + u * c - v * s, e[:, 4:5] + u * s + v * c], axis=-1)


def ellipse_bounding_boxes(ellipses: np.ndarray) -> np.ndarray:
    """Exact axis-aligned bounding rectangles [N, 4] (x1, y1, x2, y2) of ellipses [N, 5]."""
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    a, b, phi = e[:, 0], e[:, 1], e[:, 2]
    hw = np.sqrt((a * np.cos(phi)) ** 2 + (b * np.sin(phi)) ** 2)
    hh = np.sqrt((a * np.sin(phi)) ** 2 + (b * np.cos(phi)) ** 2)
    return np.stack([e[:, 3] - hw, e[:, 4] - hh, e[:, 3] + hw, e[:, 4] + hh], axis=1)


def _circle_triangle_area(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Signed area of unit disc ∩ triangle (origin, p, q); p, q [..., 2].

    The edge p→q is split where it enters/leaves the disc: the parts outside contribute circular
    sectors, the chord inside contributes a triangle. Summed over a polygon's edges this gives the
    exact disc ∩ polygon area.
    """
    d = q - p
    a = np.einsum("...i,...i->...", d, d)
    b = np.einsum("...i,...i->...", p, d)
    c = np.einsum("...i,...i->...", p, p) - 1.0
    disc = b * b - a * c
    safe_a = np.where(a > 0, a, 1.0)
    root = np.sqrt(np.clip(disc, 0.0, None))
    hit = (disc > 0) & (a > 0)
    t1 = np.where(hit, np.clip((-b - root) / safe_a, 0.0, 1.0), 0.0)
    t2 = np.where(hit, np.clip((-b + root) / safe_a, 0.0, 1.0), 0.0)
    p1 = p + t1[..., None] * d
    p2 = p + t2[..., None] * d

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    def sector(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return 0.5 * np.arctan2(cross(u, v), np.einsum("...i,...i->...", u, v))

    return sector(p, p1) + 0.5 * cross(p1, p2) + sector(p2, q)


def _intersection_areas(ellipses: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Exact area of ellipse_i ∩ rect_i for P pairs (ellipses [P, 5], rects x1, y1, x2, y2)."""
    corners = np.stack(
        [rects[:, [0, 1]], rects[:, [2, 1]], rects[:, [2, 3]], rects[:, [0, 3]]], axis=1
    )  # [P, 4, 2]
    rel = corners - ellipses[:, None, 3:5]
    c, s = np.cos(ellipses[:, 2])[:, None], np.sin(ellipses[:, 2])[:, None]
    # Rotate into the ellipse frame, then scale its axes to 1: the ellipse becomes the unit disc,
    # the rectangle a parallelogram, and areas shrink by the constant factor 1 / (a b).
    u = (rel[..., 0] * c + rel[..., 1] * s) / ellipses[:, 0:1]
    v = (-rel[..., 0] * s + rel[..., 1] * c) / ellipses[:, 1:2]
    quad = np.stack([u, v], axis=-1)
    signed = _circle_triangle_area(quad, np.roll(quad, -1, axis=1)).sum(axis=1)
    return np.abs(signed) * ellipses[:, 0] * ellipses[:, 1]


def _overlap_matrices(
    rects_per_image: Sequence[np.ndarray], ellipses_per_image: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Overlap matrices [M_i, N_i] for many images, clipping all candidate pairs in shared batches."""
    mats: list[np.ndarray] = []
    groups: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image, rect index, ellipse index)
    rects_pool: list[np.ndarray] = []
    ells_pool: list[np.ndarray] = []
    for i, (rects_in, ell_in) in enumerate(zip(rects_per_image, ellipses_per_image, strict=True)):
        rects = np.asarray(rects_in, dtype=np.float64).reshape(-1, 4)
        ell = np.asarray(ell_in, dtype=np.float64).reshape(-1, 5)
        mats.append(np.zeros((len(rects), len(ell))))
        if len(rects) == 0 or len(ell) == 0:
            continue
        eb = ellipse_bounding_boxes(ell)
        hit = (
            (rects[:, None, 0] < eb[None, :, 2])
            & (rects[:, None, 2] > eb[None, :, 0])
            & (rects[:, None, 1] < eb[None, :, 3])
            & (rects[:, None, 3] > eb[None, :, 1])
        )
        ri, ei = np.nonzero(hit)
        if ri.size:
            groups.append((i, ri, ei))
            rects_pool.append(rects[ri])
            ells_pool.append(ell[ei])
    if not groups:
        return mats
    rects = np.concatenate(rects_pool)
    ells = np.concatenate(ells_pool)
    inter = _intersection_areas(ells, rects)
    union = (
        (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1]) + np.pi * ells[:, 0] * ells[:, 1] - inter
    )
    ratio = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    ratio[ratio < _EPS] = 0.0  # tangent contacts leave ~1e-17 of rounding: not an overlap
    start = 0
    for i, ri, ei in groups:
        mats[i][ri, ei] = ratio[start : start + ri.size]
        start += ri.size
    return mats


def ellipse_rect_overlap(rects: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """FDDB overlap ratio matrix [M, N]: area(rect ∩ ellipse) / area(rect ∪ ellipse)."""
    return _overlap_matrices([rects], [ellipses])[0]


def _prefix_scores(overlap: np.ndarray, matching: Matching) -> tuple[np.ndarray, np.ndarray]:
    """Discrete and continuous TP after each prefix of score-sorted detections (rows of ``overlap``)."""
    m, n = overlap.shape
    if n == 0 or m == 0:
        return np.zeros(m), np.zeros(m)
    if n == 1:  # one face: the best detection so far is the match, in both matching modes
        cont = np.maximum.accumulate(overlap[:, 0])
        return (cont > 0.5).astype(np.float64), cont
    disc = np.zeros(m)
    cont = np.zeros(m)
    rows = np.nonzero(overlap.max(axis=1) > 0)[0]
    elig = overlap > 0.5
    d_val = c_val = 0.0
    prev = 0
    for j, k in enumerate(rows):
        disc[prev:k] = d_val
        cont[prev:k] = c_val
        sub = overlap[rows[: j + 1]]
        r, c = linear_sum_assignment(sub, maximize=True)
        c_val = float(sub[r, c].sum())
        if matching == "official":
            d_val = float(np.count_nonzero(sub[r, c] > 0.5))
        elif elig[k].any():  # the discrete count can only change when an eligible pair is added
            sub_e = elig[rows[: j + 1]].astype(np.float64)
            r, c = linear_sum_assignment(sub_e, maximize=True)
            d_val = float(sub_e[r, c].sum())
        prev = k
    disc[prev:] = d_val
    cont[prev:] = c_val
    return disc, cont


@dataclass(frozen=True)
class FddbRoc:
    """Discrete and continuous FDDB ROC; index i = all detections with score >= thresholds[i]."""

    fp: np.ndarray
    tpr_discrete: np.ndarray
    tpr_continuous: np.ndarray
    thresholds: np.ndarray
    num_faces: int
    num_det: int

    def tpr_at(self, fp: int = 1000, kind: Kind = "discrete") -> float:
        """TPR at the lowest-threshold point with at most ``fp`` false positives (0.0 if none)."""
        tpr = {"discrete": self.tpr_discrete, "continuous": self.tpr_continuous}[kind]
        ok = np.nonzero(self.fp <= fp)[0]
        return float(tpr[ok[-1]]) if ok.size else 0.0

    def to_dict(self, max_points: int = 200) -> dict[str, Any]:
        """JSON-friendly summary with a curve downsampled to at most ``max_points`` points."""
        n = self.fp.size
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64)) if n else []
        return {
            "tpr_at_1000": {
                "discrete": self.tpr_at(1000, "discrete"),
                "continuous": self.tpr_at(1000, "continuous"),
            },
            "num_faces": int(self.num_faces),
            "num_det": int(self.num_det),
            "curve": {
                "fp": [int(v) for v in self.fp[idx]],
                "tpr_discrete": [float(v) for v in self.tpr_discrete[idx]],
                "tpr_continuous": [float(v) for v in self.tpr_continuous[idx]],
                "thresholds": [float(v) for v in self.thresholds[idx]],
            },
        }


def fddb_roc(
    detections: Sequence[np.ndarray],
    ellipses: Sequence[np.ndarray],
    matching: Matching = "thresholded",
) -> FddbRoc:
    """FDDB discrete/continuous ROC over all images; detections [M, 5] x1,y1,x2,y2,score per image."""
    if len(detections) != len(ellipses):
        raise ValueError(f"{len(detections)} detection arrays but {len(ellipses)} ellipse arrays")
    if matching not in ("thresholded", "official"):
        raise ValueError(f"matching must be 'thresholded' or 'official', not {matching!r}")
    dets = [np.asarray(d, dtype=np.float64).reshape(-1, 5) for d in detections]
    dets = [d[np.argsort(-d[:, 4], kind="stable")] for d in dets]
    num_faces = int(sum(np.asarray(e).reshape(-1, 5).shape[0] for e in ellipses))
    overlaps = _overlap_matrices([d[:, :4] for d in dets], ellipses)
    scores, d_tp, d_cont = [], [], []
    for d, ov in zip(dets, overlaps, strict=True):
        disc, cont = _prefix_scores(ov, matching)
        scores.append(d[:, 4])
        d_tp.append(np.diff(disc, prepend=0.0))
        d_cont.append(np.diff(cont, prepend=0.0))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    if all_scores.size == 0:
        empty = np.zeros(0)
        return FddbRoc(empty.astype(np.int64), empty, empty, empty, num_faces, 0)
    order = np.argsort(-all_scores, kind="stable")
    s = all_scores[order]
    tp = np.cumsum(np.concatenate(d_tp)[order])
    cont_tp = np.cumsum(np.concatenate(d_cont)[order])
    fp = np.arange(1, s.size + 1) - tp
    # One point per distinct score, after every detection with that score is in.
    last = np.nonzero(np.append(s[1:] != s[:-1], True))[0]
    denom = max(num_faces, 1)
    return FddbRoc(
        fp=np.rint(fp[last]).astype(np.int64),
        tpr_discrete=tp[last] / denom,
        tpr_continuous=cont_tp[last] / denom,
        thresholds=s[last],
        num_faces=num_faces,
        num_det=int(s.size),
    )
