"""The figures of docs/tabular.md from a sweep and an audit of the shipped breast-cancer transforms.

    veil sweep --model breast-cancer-mlp --part test --draws 10 --out reports/tabular/sweep
    veil audit --model breast-cancer-mlp --transform DIR ... --out reports/tabular/audit
    python scripts/tabular_figures.py [--sweep reports/tabular/sweep] [--audit reports/tabular/audit]

Writes docs/img/tabular/: accuracy_vs_alpha.png (the sweep's), r2_vs_alpha.png (attacker R^2 per alpha
and split, clean releases and the floor drawn across), r2_per_feature.png (clean act1, the default and
the most private act2 transform), tradeoff.png (accuracy against attacker R^2, one point per transform).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from veil.audit.vector_report import plot_r2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs/img/tabular"


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def r2_vs_alpha(audit: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    targets = audit["targets"]
    for i, split in enumerate(sorted({t["split"] for t in targets})):
        noisy = sorted((t for t in targets if t["split"] == split and t["kind"] == "transform"),
                       key=lambda t: t["alpha"])  # fmt: skip
        s = [t["sets"]["test"] for t in noisy]
        color = f"C{i}"
        ax.errorbar([t["alpha"] for t in noisy], [v["r2"] for v in s], yerr=[v["r2_std"] for v in s],
                    marker="o", capsize=3, color=color, label=f"split {split}, noisy release")  # fmt: skip
        clean = next(t for t in targets if t["split"] == split and t["kind"] == "clean")
        r2 = clean["sets"]["test"]["r2"]
        ax.axhline(r2, color=color, linestyle=":", label=f"split {split}, clean release ({r2:.2f})")
    ax.axhline(0.0, color="black", linestyle="--", label="floor: the mean vector (R² = 0)")
    ax.set_xlabel("α")
    ax.set_ylabel("attacker R², mean over 30 features (test rows)")
    ax.set_ylim(-0.05, 1.0)
    ax.set_title("breast-cancer-mlp: input features recovered from the release")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def tradeoff(sweep: dict[str, Any], audit: dict[str, Any], path: Path) -> None:
    r2 = {Path(t["transform"]).name: t["sets"]["test"]["r2"] for t in audit["targets"] if t.get("transform")}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, split in enumerate(sorted({r["split"] for r in sweep["rows"]})):
        rows = [r for r in sweep["rows"] if r["split"] == split and Path(r["transform"]).name in r2]
        xs = [r2[Path(r["transform"]).name] for r in rows]
        ax.plot(xs, [r["accuracy"] for r in rows], "o-", color=f"C{i}", label=f"split {split}")
        for r, x in zip(rows, xs, strict=True):
            ax.annotate(f"α={r['alpha']:g}", (x, r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    clean = sweep["clean"]["accuracy"]
    ax.axhline(0.97 * clean, color="grey", linestyle="--", label="97 % of clean accuracy")
    ax.set_xlabel("attacker R² (lower: more private; the floor is 0)")
    ax.set_ylabel(f"test accuracy (mean of {sweep['draws']} draws)")
    ax.set_title("breast-cancer-mlp: accuracy vs what the attacker recovers")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=ROOT / "reports/tabular/sweep")
    ap.add_argument("--audit", type=Path, default=ROOT / "reports/tabular/audit")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sweep = json.loads((args.sweep / "sweep.json").read_text())
    audit = json.loads((args.audit / "metrics.json").read_text())
    shutil.copyfile(args.sweep / "accuracy_vs_alpha.png", OUT / "accuracy_vs_alpha.png")
    r2_vs_alpha(audit, OUT / "r2_vs_alpha.png")
    tradeoff(sweep, audit, OUT / "tradeoff.png")
    default = json.loads((ROOT / "src/veil/tabular/transforms/shipped.json").read_text())["default"]
    keep = {"clean act1", default, "breast-cancer-act2-alpha0.95"}
    shown = audit | {"targets": [t for t in audit["targets"] if t["name"] in keep]}
    (OUT / "r2_per_feature.png").write_bytes(plot_r2(shown))
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))} to {OUT}")


if __name__ == "__main__":
    main()
