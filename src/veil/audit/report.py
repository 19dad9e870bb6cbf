"""The audit's outputs: report.md, metrics.json and three figures, each written atomically.

Below-floor attacker scores are printed as "at floor": doing worse than predicting the average face
is not extra privacy, only a weaker attacker.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from veil.audit.figures import plot_curves, plot_reconstructions, plot_tradeoff
from veil.audit.metrics import GOAL_CLEAN_SSIM, GOAL_MARGIN
from veil.audit.pages import page_name, peers_section
from veil.imageio import atomic_write_bytes

#: metrics.json's schema (``schema`` key); the JSON Schema is ``veil/audit/metrics.schema.json``. Keys are
#: only ever added within a version; a renamed or removed key bumps it.
SCHEMA = "veil-audit/2"

THREAT_MODEL = (
    "The server (or anyone on the wire) sees every released tensor. The attacker knows the head's weights "
    "and the transform's distribution (μ, σ, suppression mask — the artifact may leak) and has auxiliary "
    "images from a similar domain (people disjoint from the evaluation images), but not the fresh noise of "
    "each request. It trains a decoder on its auxiliary images with fresh noise every step (the clean-"
    "activation decoder is the baseline), may average K requests of the same image (video frames), and may "
    "try to link requests showing the same person."
)


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
    #: The peer defences' frontier (``veil audit --peers``): rows, verdicts, the PNG's name; None: not run.
    peers: dict[str, Any] | None = None
    schema: str = SCHEMA


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
    lines += ["", "## One page per target", ""]
    lines += [f"- [{t.name}]({page_name(t)})" for t in result.targets]
    lines += peers_section(result.peers)
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


def write_report(
    result: AuditResult,
    out: Path,
    recon_rows: list[tuple[str, Tensor]],
    pictures: dict[str, list[tuple[str, Tensor]]] | None = None,
) -> dict[str, Path]:
    """Write all outputs under ``out``; each file appears complete or not at all."""
    from veil.audit.pages import write_pages

    out.mkdir(parents=True, exist_ok=True)
    record = {"schema": result.schema, "threat_model": THREAT_MODEL} | asdict(result)
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
    paths |= {f"page {name}": p for name, p in write_pages(result, out, pictures).items()}
    atomic_write_bytes(out / "report.md", markdown(result).encode())
    paths["report"] = out / "report.md"
    return paths
