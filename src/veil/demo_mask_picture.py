"""The mask demo's picture per photo: [clean | private | what left the machine], drawn with matplotlib.

Boxes are coloured by predicted class (green: with mask, red: without, orange: worn incorrectly) and
the annotated faces are thin white boxes. The third panel shows the two releases the client sent:
FaceBoxes' (a channel mosaic of the photo's activation) and the face crops' (one row per crop, its
released features flattened); the crops themselves never left.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from veil.imageio import atomic_write_bytes
from veil.mask_compliance.data import CLASSES

COLOURS = ("limegreen", "red", "orange")
NAMES = ("with mask", "without mask", "mask worn incorrectly")


def draw_classes(image: Tensor, detections: Tensor, classes: Tensor, truth: Tensor | None = None) -> Tensor:
    """uint8 image with annotated boxes (thin white) and detections coloured by class."""
    out = image.clone()
    if truth is not None and len(truth):
        out = draw_bounding_boxes(out, truth, colors="white", width=1)
    if len(detections):
        colours = [COLOURS[int(k)] for k in classes.tolist()]
        out = draw_bounding_boxes(out, detections[:, :4], colors=colours, width=3)
    return out


def _counts(classes: Tensor) -> str:
    n = [int((classes == k).sum()) for k in range(len(CLASSES))]
    return f"{len(classes)} faces: {n[0]} with, {n[1]} without, {n[2]} incorrect"


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def release_panel(sent: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(FaceBoxes' release as a 4 x 4 mosaic of 16 channels, the crops' releases [M, features] or None)."""
    act = sent[0][0]
    c, h, w = act.shape
    picks = np.linspace(0, c - 1, min(16, c)).round().astype(int)
    mosaic = np.ones((4 * (h + 1) - 1, 4 * (w + 1) - 1))
    for i, ch in enumerate(picks):
        r, col = divmod(i, 4)
        mosaic[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = _unit(act[ch])
    crops = _unit(sent[1].reshape(len(sent[1]), -1)) if len(sent) > 1 else None
    return mosaic, crops


def render(image: Tensor, result: Any, alphas: tuple[float, float]) -> Figure:
    """The figure for one :class:`veil.demo_mask.PhotoResult`."""
    _, height, width = image.shape
    aspect = width / height
    fig = Figure(figsize=(3.6 * (2 * aspect + 1.6) + 0.5, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [aspect, aspect, 1.6]})
    truth = result.photo.boxes
    for ax, label, p in (
        (axes[0], "clean (local, no noise)", result.clean),
        (axes[1], f"private (FaceBoxes α = {alphas[0]:g}, classifier α = {alphas[1]:g})", result.private),
    ):
        ax.imshow(draw_classes(image, p.detections, p.classes, truth).permute(1, 2, 0).numpy())
        ax.set_title(f"{label}\n{_counts(p.classes)}", fontsize=9)
    mosaic, crops = release_panel(result.sent)
    sub = axes[2].inset_axes((0.0, 0.45, 1.0, 0.55))
    sub.imshow(mosaic, cmap="viridis", interpolation="nearest")
    sub.set_title(
        f"what left the machine (no pixels, no crops)\nFaceBoxes' release {list(result.sent[0].shape[1:])}"
        " (16 channels)",
        fontsize=8,
    )
    low = axes[2].inset_axes((0.0, 0.0, 1.0, 0.38))
    if crops is not None:
        low.imshow(crops, cmap="viridis", aspect="auto", interpolation="nearest")
        low.set_title(f"each crop's release ({len(crops)} rows × {crops.shape[1]} values)", fontsize=8)
    else:
        low.text(0.5, 0.5, "no faces: no crop sent", ha="center", va="center", fontsize=8)
    for ax in (*axes, sub, low):
        ax.set_xticks([])
        ax.set_yticks([])
    axes[2].axis("off")
    handles = [Patch(color=c, label=n) for c, n in zip(COLOURS, NAMES, strict=True)]
    handles.append(Patch(facecolor="none", edgecolor="grey", label="annotated face"))
    fig.suptitle(f"{result.photo.name}: annotated {_counts(result.photo.labels)}", fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    return fig


def save_mask_picture(image: Tensor, result: Any, path: Path, alphas: tuple[float, float]) -> Figure:
    """Render and write the PNG atomically; returns the figure (tests read its titles)."""
    fig = render(image, result, alphas)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.08)
    atomic_write_bytes(path, buf.getvalue())
    return fig
