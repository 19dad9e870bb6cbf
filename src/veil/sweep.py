"""The alpha sweep: train (or reuse) one transform per alpha, measure AP under noise, tabulate and plot.

Produces the reference design's accuracy-comparison table — ALPHA | AP | AP retained | mean sigma |
SNR — as Markdown and CSV, plus ``accuracy_vs_alpha.png``. AP under noise is the mean over several
noise draws, with its standard deviation, because a single draw can flatter or wrong a transform.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.artifact import load_transform
from veil.faceboxes.data.labels import LabeledDataset
from veil.faceboxes.eval.runner import evaluate_draws
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.tiles import TileGrid, tiled
from veil.imageio import atomic_write_bytes, load_image
from veil.noise import snr_db


@dataclass
class SweepRow:
    alpha: float | None  # None: the clean baseline
    ap: float
    ap_std: float
    retained: float
    mean_sigma: float
    snr_db: float
    transform: str | None


def _snr(detector: Any, dataset: LabeledDataset, images: int = 8) -> float:
    """Mean SNR (dB) of released vs clean activations over the first few images of the dataset."""
    values = []
    for item in dataset.images[:images]:
        batch = detector.preprocess([load_image(item.path)])
        with torch.inference_mode():
            clean = detector.head(batch.tensor)
            values.append(snr_db(clean, detector.noise(clean)))
    return float(np.mean(values))


def evaluate_transform(
    weights: str | Path,
    transform: str | Path | None,
    dataset: LabeledDataset,
    draws: int,
    clean_ap: float | None = None,
    progress: bool = False,
    tiles: int = 1,
    overlap: float = TileGrid.overlap,
) -> SweepRow:
    """One row of the table: AP (mean and std over draws) and the transform's strength.

    ``tiles`` > 1 detects in the full frame and its crops too (:mod:`veil.faceboxes.tiles`); compare
    with a clean row measured with the same ``tiles``.
    """
    det = load_pipeline(weights, transform)
    detect = tiled(det.detect, TileGrid(tiles=tiles, overlap=overlap), det.size)
    summary, _ = evaluate_draws(dataset, detect, draws=draws if transform else 1, progress=progress)
    ap = summary.mean.pooled_ap
    std = float(summary.pooled.std(ddof=1)) if len(summary.per_draw) > 1 else 0.0
    if transform is None:
        return SweepRow(None, ap, 0.0, 1.0, 0.0, float("inf"), None)
    tr = load_transform(transform)
    return SweepRow(
        alpha=tr.alpha,
        ap=ap,
        ap_std=std,
        retained=ap / clean_ap if clean_ap else float("nan"),
        mean_sigma=float(tr.noise.mean_sigma()),
        snr_db=_snr(det, dataset),
        transform=str(transform),
    )


def to_markdown(rows: list[SweepRow], title: str) -> str:
    """The reference design's table (ALPHA | AP), with retention, noise strength and the transform's name."""
    head = (
        "| obfuscation | ALPHA | AP (mean ± std over draws) | AP retained | mean σ | SNR (dB) | transform |"
    )
    out = [f"### {title}", "", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.alpha is None:
            out.append(f"| no | n/a | {r.ap:.4f} | 100.0% | – | – | – |")
        else:
            out.append(
                f"| yes | {r.alpha:g} | {r.ap:.4f} ± {r.ap_std:.4f} | {100 * r.retained:.1f}% | "
                f"{r.mean_sigma:.3f} | {r.snr_db:.1f} | {Path(r.transform or '').name} |"
            )
    return "\n".join(out) + "\n"


def to_csv(rows: list[SweepRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["alpha", "ap", "ap_std", "ap_retained", "mean_sigma", "snr_db", "transform"])
    for r in rows:
        writer.writerow(
            [
                "" if r.alpha is None else r.alpha,
                r.ap,
                r.ap_std,
                r.retained,
                r.mean_sigma,
                r.snr_db,
                r.transform or "",
            ]
        )
    return buf.getvalue()


def _config(row: SweepRow) -> str:
    """The configuration a row belongs to: its transform's name without the alpha suffix."""
    name = Path(row.transform or "").name
    return name.split("-alpha")[0] if "-alpha" in name else "transform"


def plot(rows: list[SweepRow], path: Path, title: str) -> None:
    """AP retained (with draw spread) and mean sigma against alpha, one line per configuration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next((r.ap for r in rows if r.alpha is None), None)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax2 = ax.twinx()
    configs = sorted({_config(r) for r in rows if r.alpha is not None})
    for k, config in enumerate(configs):
        sel = sorted(
            (r for r in rows if r.alpha is not None and _config(r) == config), key=lambda r: r.alpha or 0
        )
        alphas = [float(r.alpha or 0.0) for r in sel]
        err = [100 * r.ap_std / clean if clean else 0.0 for r in sel]
        color = f"C{k}"
        ax.errorbar(
            alphas,
            [100 * r.retained for r in sel],
            yerr=err,
            marker="o",
            capsize=3,
            color=color,
            label=f"AP retained: {config}",
        )
        ax2.plot(
            alphas,
            [r.mean_sigma for r in sel],
            marker="s",
            ls="--",
            color=color,
            alpha=0.6,
            label=f"mean σ: {config}",
        )
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("alpha")
    ax.set_ylabel("AP retained (%)")
    ax2.set_ylabel("mean σ (dashed)")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(rows: list[SweepRow], out: Path, title: str, extra: dict[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "table.md", to_markdown(rows, title).encode())
    atomic_write_bytes(out / "table.csv", to_csv(rows).encode())
    record = {"title": title, "rows": [asdict(r) for r in rows]} | (extra or {})
    atomic_write_bytes(out / "sweep.json", json.dumps(record, indent=1, default=str).encode())
    plot(rows, out / "accuracy_vs_alpha.png", title)
