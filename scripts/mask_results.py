"""The mask-compliance results page's numbers and figures, from the shipped files and an audit report.

    .venv/bin/python scripts/mask_results.py --audit reports/mask-compliance/audit/metrics.json

Test half (920 face crops the classifier and the transforms never saw): the clean classifier and every
shipped transform (``--draws`` noise draws, default 5) -> balanced accuracy retained per alpha. The audit's
``metrics.json`` (``veil audit`` on LFW crops, see docs/mask-compliance.md) -> attacker SSIM at K = 1 per
transform against the mean-image floor and the clean baseline. Writes ``reports/mask-compliance/results.json``
and ``docs/img/mask-compliance/{accuracy,ssim}-vs-alpha.png``, ``confusion-default.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.mask_compliance.data import crops, load_faces
from veil.mask_compliance.evaluate import evaluate_crops
from veil.mask_compliance.metrics import plot_confusion
from veil.mask_compliance.shipped import all_transforms, shipped_default
from veil.models.public import build_model

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs/img/mask-compliance"


def audit_rows(path: Path | None) -> tuple[dict[str, Any], dict[str, float], float | None]:
    """({transform dir name: K=1 SSIM}, {split: clean SSIM}, floor SSIM) from an audit's metrics.json."""
    if path is None or not path.is_file():
        return {}, {}, None
    m = json.loads(path.read_text())
    first = m["eval_sets"][0]
    rows, clean = {}, {}
    for t in m["targets"]:
        ssim = float(t["sets"][first]["ssim"]["1"])
        if t["kind"] == "clean":
            clean[str(t["split"])] = ssim
        elif t.get("transform"):
            rows[Path(t["transform"]).name] = ssim
    return rows, clean, float(m["floor"][first]["ssim"])


def plot(xs: list[float], series: dict[str, list[float]], lines: dict[str, float], title: str, ylabel: str,
         out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series.items():
        ax.plot(xs, ys, "o-", label=label)
    styles = [("grey", "--"), ("grey", ":"), ("grey", "-."), ("tab:red", "--"), ("tab:orange", "--")]
    for (label, y), (color, style) in zip(lines.items(), styles, strict=False):
        ax.axhline(y, color=color, linestyle=style, label=label)
    ax.set_xlabel("alpha")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/mask-scenes")
    ap.add_argument("--audit", type=Path, default=None)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/mask-compliance/results.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = build_model("mask-compliance")
    x, y = crops(load_faces(args.data, "test"))
    clean = evaluate_crops(model, x, y)
    ssims, clean_ssim, floor = audit_rows(args.audit)
    rows = []
    for path in all_transforms():
        res = evaluate_crops(model, x, y, transform=path, draws=args.draws, progress=True)
        res["retained"] = res["balanced_accuracy"] / clean["balanced_accuracy"]
        res["ssim_k1"] = ssims.get(path.name)
        res["name"] = path.name
        rows.append(res)
        bal, std = res["balanced_accuracy"], res["balanced_accuracy_std"]
        print(f"{path.name}: balanced {bal:.4f} ± {std:.4f} ({res['retained']:.1%}), "
              f"accuracy {res['accuracy']:.4f}, SSIM K=1 {res['ssim_k1']}")  # fmt: skip
    default = shipped_default()
    out = {"clean": clean, "transforms": rows, "default": default.name if default else None,
           "audit": {"metrics": str(args.audit), "clean_ssim": clean_ssim, "floor_ssim": floor}}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    IMG.mkdir(parents=True, exist_ok=True)
    for split in sorted({r["split"] for r in rows}):
        sel = sorted((r for r in rows if r["split"] == split), key=lambda r: r["alpha"])
        alphas = [r["alpha"] for r in sel]
        plot(alphas, {f"{split}, mean of {args.draws} draws": [r["balanced_accuracy"] for r in sel]},
             {"clean": clean["balanced_accuracy"], "97 % of clean": 0.97 * clean["balanced_accuracy"]},
             f"balanced accuracy vs alpha, test half ({len(y)} face crops)", "balanced accuracy",
             IMG / f"accuracy-vs-alpha-{split}.png")  # fmt: skip
        if floor is not None and split in clean_ssim:
            pts = [(r["alpha"], r["ssim_k1"]) for r in sel if r["ssim_k1"] is not None]
            lines = {f"clean release at {split}": clean_ssim[split], "mean-image floor + 0.03": floor + 0.03,
                     "mean-image floor": floor}  # fmt: skip
            lines |= {f"clean release at {s}": v for s, v in clean_ssim.items() if s != split}
            plot([a for a, _ in pts], {f"{split} release": [s for _, s in pts]}, lines,
                 "attacker SSIM at K = 1 on LFW test crops (higher: more recovered)", "SSIM",
                 IMG / f"ssim-vs-alpha-{split}.png")  # fmt: skip
    if default is not None:
        d = next(r for r in rows if r["name"] == default.name)
        m = np.asarray(d["confusion"])
        title = (f"default {default.name}\nmean of {args.draws} draws: balanced accuracy "
                 f"{d['balanced_accuracy']:.3f} ({d['retained']:.1%} of clean)")  # fmt: skip
        plot_confusion(m.round().astype(int), title, IMG / "confusion-default.png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
