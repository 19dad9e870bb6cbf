"""Detection metrics for FDDB: pooled VOC AP, the official FDDB ROC, and report formatting."""

from veil.faceboxes.eval.ap import (
    APResult,
    ap_details,
    average_precision,
    box_iou,
    match_detections,
    voc_ap,
    wider_style_ap,
)
from veil.faceboxes.eval.fddb_roc import (
    FddbRoc,
    ellipse_bounding_boxes,
    ellipse_polygons,
    ellipse_rect_overlap,
    fddb_roc,
)
from veil.faceboxes.eval.report import EvalResult, fold_mean, format_tr_results, write_json_atomic

__all__ = [
    "APResult",
    "EvalResult",
    "FddbRoc",
    "ap_details",
    "average_precision",
    "box_iou",
    "ellipse_bounding_boxes",
    "ellipse_polygons",
    "ellipse_rect_overlap",
    "fddb_roc",
    "fold_mean",
    "format_tr_results",
    "match_detections",
    "voc_ap",
    "wider_style_ap",
    "write_json_atomic",
]
