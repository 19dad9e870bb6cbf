"""The audit's figures: reconstructions, the privacy-utility trade-off and the attackers' training curves.

Each is written atomically as a PNG with a title or labels and a legend.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from veil.audit.metrics import GOAL_MARGIN
from veil.imageio import atomic_write_bytes

if TYPE_CHECKING:
    from veil.audit.report import AuditResult, TargetResult


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reconstructions(rows: list[tuple[str, Tensor]], path: Path, title: str | None = None) -> None:
    """One row per (label, uint8 [N, 3, H, W]) — original, clean reconstruction(s), one per transform."""
    from torchvision.utils import make_grid

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.7 * len(rows) + 0.3), dpi=100, squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        grid = make_grid(images, nrow=images.shape[0], padding=2, pad_value=255)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title or "what the receiver rebuilds from one release (row 1: the originals)", fontsize=10)
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))


def plot_tradeoff(result: AuditResult, path: Path) -> None:
    """AP retained (or α without a sweep) against attacker SSIM, one point per α; floor as a line."""
    plt = _pyplot()
    primary = result.eval_sets[0]
    floor = result.floor[primary]["ssim"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    noisy = [t for t in result.targets if t.kind == "transform" and primary in t.sets]
    have_ap = any(t.ap_retained is not None for t in noisy)
    tracks: dict[str, list[tuple[float, float]]] = {}

    def y_of(t: TargetResult) -> float | None:  # AP retained when the sweep gave it, else alpha
        if have_ap:
            return None if t.ap_retained is None else 100 * t.ap_retained
        return t.alpha

    for i, (k, marker) in enumerate(
        zip([int(k) for k in result.config.get("ks", [1, 4, 16])], ("o", "s", "^", "D"), strict=False)
    ):
        pts: list[tuple[float, float, TargetResult]] = []
        for t in noisy:
            y = y_of(t)
            if y is not None:
                pts.append((float(t.sets[primary]["ssim"][str(k)]), y, t))
        if not pts:
            continue
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=marker,
            label=f"attacker K={k}",
            facecolors="none" if k > 1 else f"C{i}",
            edgecolors=f"C{i}",
        )
        for x, y, t in pts:
            tracks.setdefault(t.name, []).append((x, y))
        if k == 1:
            for x, y, t in pts:
                ax.annotate(
                    f"α={t.alpha:g} {t.split}" if t.alpha is not None else t.name,
                    (x, y),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    for track in tracks.values():  # how far repeated queries move each transform
        ax.plot([p[0] for p in track], [p[1] for p in track], color="grey", lw=0.6, zorder=0)
    ax.axvline(floor, color="black", ls="--", lw=1, label=f"mean-image floor ({floor:.3f})")
    ax.axvspan(0, floor + GOAL_MARGIN, color="tab:green", alpha=0.08, label="≤ floor + 0.03")
    for t in result.targets:
        if t.kind == "clean" and primary in t.sets:
            ax.axvline(t.sets[primary]["ssim"]["1"], color="tab:red", ls=":", lw=1)
            ax.text(
                t.sets[primary]["ssim"]["1"],
                ax.get_ylim()[1],
                f" {t.name}",
                rotation=90,
                fontsize=7,
                va="top",
                color="tab:red",
            )
    ax.set_xlabel(f"attacker SSIM on {primary} (lower = more private)")
    ax.set_ylabel("AP retained (%)" if have_ap else "α (pass --sweep for AP retained)")
    ax.set_title("privacy–utility trade-off")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))


def plot_curves(result: AuditResult, path: Path) -> None:
    """Validation SSIM and training loss per attacker: the evidence that it trained to a plateau."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for t in result.targets:
        curve = t.training.get("curve", [])
        steps = [p["step"] for p in curve]
        if any("val_ssim" in p for p in curve):
            ax1.plot(
                [p["step"] for p in curve if "val_ssim" in p],
                [p["val_ssim"] for p in curve if "val_ssim" in p],
                label=t.name,
            )
        ax2.plot(steps, [p["loss"] for p in curve], label=t.name)
    if result.eval_sets:
        ax1.axhline(
            result.floor[result.eval_sets[0]]["ssim"], color="black", ls="--", lw=1, label="mean-image floor"
        )
    ax1.set_xlabel("step")
    ax1.set_ylabel("held-out auxiliary SSIM (K=1)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))
