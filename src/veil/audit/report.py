"""The audit's outputs: report.md, metrics.json and three figures, each written atomically.

Below-floor attacker scores are printed as "at floor": doing worse than predicting the average face
is not extra privacy, only a weaker attacker.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from veil.imageio import atomic_write_bytes

THREAT_MODEL = (
    "The server (or anyone on the wire) sees every released tensor. The attacker knows the head's weights "
    "and the transform's distribution (μ, σ, suppression mask — the artifact may leak) and has auxiliary "
    "images from a similar domain (people disjoint from the evaluation images), but not the fresh noise of "
    "each request. It trains a decoder on its auxiliary images with fresh noise every step (the clean-"
    "activation decoder is the baseline), may average K requests of the same image (video frames), and may "
    "try to link requests showing the same person."
)
GOAL_CLEAN_SSIM = 0.65  # the audit's attacker must be at least this strong on clean RDCL activations
GOAL_MARGIN = 0.03  # "no information beyond the average face": attacker SSIM <= floor + this


@dataclass
class TargetResult:
    """Everything measured for one attacked configuration (clean baseline or transform)."""

    name: str
    kind: str  # "clean" or "transform"
    split: str
    input_size: int
    alpha: float | None = None
    granularity: str | None = None
    transform: str | None = None
    mean_sigma: float | None = None
    ap: float | None = None
    ap_retained: float | None = None
    release_sha256: str | None = None  # what the client sends; shared by tail-only re-tunes
    # generic (veil.protect) transforms only; absent (None) for FaceBoxes targets
    model: str | None = None  # the transform's model class
    input_shape: list[int] | None = None  # (C, H, W) per the transform's input spec
    wire_shape: list[int] | None = None  # (C, h, w) of the released tensor the decoder reads
    decoder: dict[str, Any] | None = None  # how the decoder sized itself (fold, body grid, stages)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    linkage: dict[str, dict[str, float]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditResult:
    """The whole audit: configuration, floors per evaluation set and one entry per target."""

    config: dict[str, Any]
    floor: dict[str, dict[str, float]]
    targets: list[TargetResult]
    eval_sets: list[str]
    notes: list[str] = field(default_factory=list)


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def fmt_ssim(value: float | None, floor: float) -> str:
    """SSIM as a string, "at floor" when no better than predicting the mean auxiliary image."""
    if value is None or math.isnan(value):
        return "–"
    return f"at floor ({value:.3f})" if value <= floor else f"{value:.3f}"


def _ks(result: AuditResult) -> list[int]:
    return [int(k) for k in result.config.get("ks", [1, 4, 16])]


def markdown(result: AuditResult) -> str:
    """report.md: threat model, per-set tables, linkage, convergence and the goals, stated plainly."""
    ks = _ks(result)
    lines = ["# veil privacy audit", "", "## Threat model", "", THREAT_MODEL, "", "## Setup", ""]
    cfg = result.config
    lines.append(
        f"Decoder `{cfg.get('architecture')}` (width {cfg.get('width')}), {cfg.get('steps')} steps, "
        f"batch {cfg.get('batch_size')}, Adam lr {cfg.get('lr')} (cosine), "
        f"loss L1 + {cfg.get('ssim_weight')}·(1−SSIM), {cfg.get('adapt_steps')} extra steps per K > 1; "
        f"output {cfg.get('output_size')}² px; auxiliary images: {cfg.get('aux')} ({cfg.get('aux_images')}). "
        f"Linkage verifier: {cfg.get('linkage_steps')} steps."
    )
    lines += [
        "",
        "SSIM/PSNR: one release per image (K = 1) or the mean of K releases; the attacker also gets "
        "a decoder fine-tuned on K-averaged noise and the better score counts.",
    ]
    for set_name in result.eval_sets:
        floor = result.floor[set_name]
        lines += [
            "",
            f"## {set_name}",
            "",
            f"Mean-image floor: SSIM {floor['ssim']:.3f}, PSNR {floor['psnr']:.1f} dB "
            f"({int(floor['images'])} images).",
            "",
        ]
        head = ["target", "split", "α", "AP retained"] + [f"SSIM K={k}" for k in ks]
        head += [f"PSNR K={k}" for k in ks] + ["SNR (dB)", "dCor", "linkage AUC"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in result.targets:
            m = t.sets.get(set_name)
            if m is None:
                continue
            link = t.linkage.get(set_name, {}).get("auc")
            row = [
                t.name,
                t.split,
                _f(t.alpha, 2) if t.alpha is not None else "clean",
                f"{100 * t.ap_retained:.1f}%" if t.ap_retained is not None else "–",
            ]
            row += [fmt_ssim(m["ssim"].get(str(k)), floor["ssim"]) for k in ks]
            row += [_f(m["psnr"].get(str(k)), 1) for k in ks]
            row += [_f(m.get("snr_db"), 1), _f(m.get("dcor")), _f(link)]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## Linkage",
        "",
        "ROC AUC of same/different-person pairs (0.5 = requests cannot be linked); "
        "the stronger of a trained verifier and raw cosine similarity.",
        "",
    ]
    lines += [
        "| target | set | verifier AUC | raw-cosine AUC | same / different pairs |",
        "|---|---|---|---|---|",
    ]
    for t in result.targets:
        for set_name, pair_auc in t.linkage.items():
            lines.append(
                f"| {t.name} | {set_name} | {_f(pair_auc.get('verifier_auc'))} | "
                f"{_f(pair_auc.get('raw_auc'))} | "
                f"{int(pair_auc['pairs_same'])} / {int(pair_auc['pairs_different'])} |"
            )
    lines += [
        "",
        "## Attacker training",
        "",
        "![training curves](training_curves.png)",
        "",
        "| target | best val SSIM | at step | last-quarter gain | converged |",
        "|---|---|---|---|---|",
    ]
    for t in result.targets:
        tr = t.training
        lines.append(
            f"| {t.name} | {_f(tr.get('best_val_ssim'))} | {tr.get('best_step', '–')} | "
            f"{_f(tr.get('plateau_gain'))} | {'yes' if tr.get('converged') else 'NO: raise --steps'} |"
        )
    lines += _generic_section(result)
    lines += ["", "## Goals", "", *_goals(result)]
    released = [t for t in result.targets if t.kind == "transform" and t.release_sha256]
    if released:
        lines += [
            "",
            "## Releases",
            "",
            "What each transform sends is fixed by its release digest (noise and fine-tuned head; "
            "`release_sha256` in transform.json). A transform with the same digest, e.g. its tail re-tuned "
            "with `veil tune-tail`, sends identically distributed tensors, so these numbers hold for it too.",
            "",
        ]
        lines += [f"- {t.name}: `{t.release_sha256}`" for t in released]
    lines += ["", "![reconstructions](reconstructions.png)", "", "![trade-off](tradeoff.png)", ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(lines)


def _shape(shape: list[int] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "–"


def _generic_section(result: AuditResult) -> list[str]:
    """Generic transforms: what was attacked, through which wire, with which decoder (empty otherwise)."""
    rows = [t for t in result.targets if t.wire_shape is not None]
    if not rows:
        return []
    cfg = result.config
    lines = [
        "",
        "## Transforms and wires",
        "",
        f"Model `{cfg.get('model')}`"
        + (f" with weights `{cfg.get('weights')}`" if cfg.get("weights") else "")
        + ". Images are prepared as each transform's input spec says; the decoder reads the released "
        "tensor (the wire) and sizes itself from its shape and the output size.",
        "",
        "| target | model | split | α | granularity | input (C×H×W) | wire (C×h×w) | decoder | transform |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in rows:
        d = t.decoder or {}
        body = f", resize to {d['body']}²" if d.get("body") else ""
        dec = f"fold {d.get('fold')}{body}, {d.get('stages')} ×2 stages → {d.get('out_size')}²" if d else "–"
        alpha = _f(t.alpha, 2) if t.alpha is not None else "clean"
        lines.append(
            f"| {t.name} | {t.model or '–'} | {t.split} | {alpha} | "
            f"{t.granularity or '–'} | {_shape(t.input_shape)} | {_shape(t.wire_shape)} | {dec} | "
            f"{t.transform or '–'} |"
        )
    return lines


def _goals(result: AuditResult) -> list[str]:
    """The issue's targets, met or not, on the first evaluation set."""
    if not result.eval_sets:
        return ["No evaluation set."]
    primary = result.eval_sets[0]
    floor = result.floor[primary]["ssim"]
    out = []
    for t in result.targets:
        m = t.sets.get(primary)
        if m is None:
            continue
        s1 = m["ssim"].get("1", float("nan"))
        if t.kind == "clean" and t.split == "rdcl":
            ok = s1 >= GOAL_CLEAN_SSIM
            recipe = t.input_size == 512 and result.config.get("output_size") == 128
            out.append(
                f"- Attacker strength, {t.name}: SSIM {s1:.3f} {'≥' if ok else '<'} {GOAL_CLEAN_SSIM} on "
                f"{primary}: {'met' if ok else 'NOT met (the attacker is weaker than required)'}"
                + ("." if recipe else " (the goal is defined for 512² inputs and 128² reconstructions).")
            )
        elif t.kind == "transform":
            private = s1 <= floor + GOAL_MARGIN
            verdict = "no information beyond the average face" if private else "NOT at the floor"
            ap = f", AP retained {100 * t.ap_retained:.1f}%" if t.ap_retained is not None else ""
            worst = max(m["ssim"].values())
            out.append(
                f"- {t.name} (α={_f(t.alpha, 2)}): K=1 SSIM {s1:.3f} vs floor {floor:.3f} + {GOAL_MARGIN}: "
                f"{verdict}; worst over K {worst:.3f}{ap}."
            )
    return out or ["No targets."]


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


def plot_reconstructions(rows: list[tuple[str, Tensor]], path: Path) -> None:
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

    for i, (k, marker) in enumerate(zip(_ks(result), ("o", "s", "^", "D"), strict=False)):
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


def write_report(result: AuditResult, out: Path, recon_rows: list[tuple[str, Tensor]]) -> dict[str, Path]:
    """Write all outputs under ``out``; each file appears complete or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"threat_model": THREAT_MODEL} | asdict(result)
    atomic_write_bytes(out / "metrics.json", (json.dumps(record, indent=1, default=str) + "\n").encode())
    paths = {"metrics": out / "metrics.json"}
    if recon_rows:
        plot_reconstructions(recon_rows, out / "reconstructions.png")
        paths["reconstructions"] = out / "reconstructions.png"
    if result.eval_sets:
        plot_tradeoff(result, out / "tradeoff.png")
        paths["tradeoff"] = out / "tradeoff.png"
    plot_curves(result, out / "training_curves.png")
    paths["training_curves"] = out / "training_curves.png"
    atomic_write_bytes(out / "report.md", markdown(result).encode())
    paths["report"] = out / "report.md"
    return paths
