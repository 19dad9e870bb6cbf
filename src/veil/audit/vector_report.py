"""The vector audit's outputs: report.md, metrics.json and r2_per_feature.png, each written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from veil.imageio import atomic_write_bytes

THREAT_MODEL = (
    "The server (or anyone on the wire) sees every released vector. The attacker knows the head's weights "
    "and the transform's distribution (μ, σ, suppression mask) and has auxiliary rows from the same "
    "population (disjoint from the scored rows), but not the fresh noise of each request. It trains an MLP "
    "decoder from the release to the input features on its rows with fresh noise every step (the clean-"
    "release decoder is the baseline). Score: R² per feature on the held-out rows; predicting the mean "
    "vector scores 0 (the floor)."
)


def _label(t: dict[str, Any]) -> str:
    return t["name"] if t.get("alpha") is None else f"{t['name']} (α={t['alpha']:g})"


def _markdown(result: dict[str, Any]) -> str:
    targets, features = result["targets"], result["features"]
    cfg = result["config"]
    lines = [
        "# veil vector audit",
        "",
        f"Model `{cfg['model']}`; attacker trained on {cfg['aux_rows']} auxiliary rows, {cfg['steps']} steps "
        f"(MLP width {cfg['width']}); noisy releases scored over {cfg['eval_draws']} fresh draws.",
        "",
        f"Threat model: {THREAT_MODEL}",
        "",
    ]
    for set_name, n_rows in result["eval_sets"].items():
        floor = result["floor"]["aux_mean_r2"][set_name]
        lines += [
            f"## {set_name} ({n_rows} rows)",
            "",
            f"Floor: R² = 0 (the mean vector of these rows); the auxiliary rows' mean vector scores "
            f"{floor:.3f}.",
            "",
            "| target | split | α | wire | mean σ | R² overall (± std over draws) "
            "| best-recovered feature (R²) |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in targets:
            s = t["sets"][set_name]
            best = s["best_feature"]
            alpha = "—" if t.get("alpha") is None else f"{t['alpha']:g}"
            sigma = "—" if t.get("mean_sigma") is None else f"{t['mean_sigma']:.3f}"
            lines.append(
                f"| {t['name']} | {t['split']} | {alpha} | {t['wire_shape'][0]} | {sigma} | "
                f"{s['r2']:.3f} ± {s['r2_std']:.3f} | {best['name']} ({best['r2']:.3f}) |"
            )
        lines += ["", "R² per feature:", "", "| feature | " + " | ".join(_label(t) for t in targets) + " |"]
        lines.append("|---|" + "---|" * len(targets))
        for f in features:
            cells = " | ".join(f"{t['sets'][set_name]['per_feature'][f]:.3f}" for t in targets)
            lines.append(f"| {f} | {cells} |")
        lines.append("")
    lines += ["## Attacker training", "", "| target | best step | best validation R² |", "|---|---|---|"]
    for t in targets:
        tr = t["training"]
        lines.append(f"| {t['name']} | {tr['best_step']} | {tr['best_val_r2']:.3f} |")
    lines += ["", "Figure: `r2_per_feature.png`. Numbers: `metrics.json`.", ""]
    return "\n".join(lines)


def plot_r2(result: dict[str, Any], set_name: str | None = None) -> bytes:
    """PNG bytes: R² per feature, one bar series per target, with the floor at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    set_name = set_name or next(iter(result["eval_sets"]))
    features, targets = result["features"], result["targets"]
    x = np.arange(len(features))
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(features) + 3), 5.5))
    for i, t in enumerate(targets):
        values = [max(t["sets"][set_name]["per_feature"][f], -0.5) for f in features]
        overall = t["sets"][set_name]["r2"]
        ax.bar(x + (i - (len(targets) - 1) / 2) * width, values, width, label=f"{_label(t)}: {overall:.2f}")
    ax.axhline(0.0, color="black", linewidth=1, linestyle="--", label="floor (mean vector), R² = 0")
    ax.set_xticks(x, features, rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("attacker R² (clipped at -0.5)")
    ax.set_ylim(-0.5, 1.05)
    ax.set_title(f"Input features recovered from the release, per feature ({set_name} rows)")
    ax.legend(fontsize=8, title="target: overall R²", title_fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_vector_report(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "metrics.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / "report.md", _markdown(result).encode())
    atomic_write_bytes(out / "r2_per_feature.png", plot_r2(result))
