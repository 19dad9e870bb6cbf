"""The privacy-utility frontier: attacker SSIM against accuracy retained, veil's transforms among peers.

A row is one defence: ``{"family", "level", "accuracy_retained", "ssim": {attack: {K: SSIM}},
"strongest", "floor"}`` (:func:`veil.audit.peers.run.run_peers` writes them). ``family == "veil"`` marks
veil's own transforms, ``"clean"`` the undefended split. One defence *dominates* another at matched
accuracy when it keeps at least as much accuracy and leaks no more (strongest attacker SSIM <=, up to
``TOLERANCE``); an SSIM at or below the row's mean-image ``floor`` counts as the floor (an attacker
that does no better than the mean image has shown no leak, and differences below it are noise).
:func:`verdicts` says, for every peer point, which veil transform dominates it, or that none does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Tolerance of the comparison: SSIM differences below this are measurement noise (one eval set).
TOLERANCE = 0.005


def _label(row: dict[str, Any]) -> str:
    if row["family"] == "veil":
        return f"veil α {row['level']:g}"
    if row["family"] == "clean":
        return "clean split"
    return f"{row['family']} {row['level']:g}"


def leak(row: dict[str, Any]) -> float:
    """The row's strongest SSIM, raised to its floor when it has one (below the floor: no leak shown)."""
    floor = row.get("floor")
    s = float(row["strongest"])
    return max(s, float(floor)) if floor is not None and math.isfinite(float(floor)) else s


def dominated_by(
    peer: dict[str, Any], veil_rows: Sequence[dict[str, Any]], tol: float = TOLERANCE
) -> list[str]:
    """Labels of the veil rows with accuracy retained >= the peer's and strongest SSIM <= the peer's."""
    return [
        _label(v)
        for v in veil_rows
        if v["accuracy_retained"] >= peer["accuracy_retained"] - 1e-9 and leak(v) <= leak(peer) + tol
    ]


def verdicts(rows: Sequence[dict[str, Any]], tol: float = TOLERANCE) -> list[str]:
    """One plain sentence per peer row: dominated by which veil transform, or by none (and why)."""
    veil_rows = [r for r in rows if r["family"] == "veil"]
    out = []
    for r in rows:
        if r["family"] in ("veil", "clean"):
            continue
        head = f"{_label(r)} (retained {r['accuracy_retained']:.1%}, SSIM {r['strongest']:.3f})"
        if not veil_rows:
            out.append(f"{head}: no veil transform to compare with.")
            continue
        winners = dominated_by(r, veil_rows, tol)
        if winners:
            at_floor = " (both at the mean-image floor)" if leak(r) <= float(r.get("floor", -1)) + tol else ""
            out.append(
                f"{head}: dominated by {', '.join(winners)} "
                f"(as much accuracy or more, as little SSIM or less){at_floor}."
            )
            continue
        more_acc = [v for v in veil_rows if v["accuracy_retained"] >= r["accuracy_retained"] - 1e-9]
        if more_acc:
            best = min(more_acc, key=leak)
            why = f"{_label(best)} keeps as much accuracy but leaks more (SSIM {best['strongest']:.3f})"
        else:
            best = max(veil_rows, key=lambda v: v["accuracy_retained"])
            why = (
                f"no veil transform keeps {r['accuracy_retained']:.1%} "
                f"(the most: {_label(best)}, {best['accuracy_retained']:.1%})"
            )
        out.append(f"{head}: NOT dominated: {why}.")
    return out


def plot_frontier(rows: Sequence[dict[str, Any]], floor: float, out: str | Path, title: str = "") -> Path:
    """One PNG: x = accuracy retained, y = strongest attacker SSIM; a line per peer family, veil's
    transforms as stars, the clean split as a cross, the mean-image floor dashed. The legend's labels
    are also written into the PNG's ``Description`` text chunk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    families = [f for f in dict.fromkeys(r["family"] for r in rows) if f not in ("veil", "clean")]
    markers = "osD^vPX<>"
    for i, fam in enumerate(families):
        pts = sorted(
            ((r["accuracy_retained"], r["strongest"], r["level"]) for r in rows if r["family"] == fam),
            key=lambda t: t[2],
        )
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=fam, linewidth=1.2, markersize=6)
        for x, y, lv in pts:
            ax.annotate(f"{lv:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    veil_rows = [r for r in rows if r["family"] == "veil"]
    if veil_rows:
        ax.scatter(
            [r["accuracy_retained"] for r in veil_rows],
            [r["strongest"] for r in veil_rows],
            marker="*",
            s=220,
            color="black",
            zorder=5,
            label="veil (shipped transforms)",
        )
        for r in veil_rows:
            ax.annotate(f"α {r['level']:g}", (r["accuracy_retained"], r["strongest"]),
                        textcoords="offset points", xytext=(6, -10), fontsize=8)  # fmt: skip
    for r in rows:
        if r["family"] == "clean":
            ax.scatter([r["accuracy_retained"]], [r["strongest"]], marker="x", s=80, color="grey",
                       zorder=4, label="clean split (no defence)")  # fmt: skip
    if math.isfinite(floor):
        ax.axhline(floor, linestyle="--", color="grey", linewidth=1, label=f"mean-image floor {floor:.3f}")
    ax.set_xlabel("accuracy retained (defended / clean)")
    ax.set_ylabel("attacker SSIM (strongest attack, any K)")
    ax.set_title(title or "peer defences at the same split", fontsize=10)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = "; ".join(t.get_text() for t in legend.get_texts())  # kept in the PNG, for tests and tools
    fig.savefig(
        out, dpi=110, metadata={"Title": title or "peer frontier", "Description": f"legend: {labels}"}
    )
    plt.close(fig)
    return out
