"""One report page per attacked configuration: every attack's score, the bound, the peers and the pictures.

``report.md`` is the overview (every target in one table per evaluation set); ``targets/<name>.md`` is
the page a reader opens for one transform: the decoder per K, the white-box inversion (rMLE, hybrid)
next to the decoder on the same releases, the Fisher-information bound next to the attackers' measured
errors, fresh against sticky noise for repeated queries, linkage, and where the peer defences were run,
the frontier with this transform on it. Pages are written atomically, like every audit output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from veil.audit.measure import slug
from veil.audit.metrics import GOAL_MARGIN
from veil.imageio import atomic_write_bytes

if TYPE_CHECKING:
    from veil.audit.report import AuditResult, TargetResult


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    return f"{float(v):.{digits}f}"


def page_name(target: TargetResult) -> str:
    return f"targets/{slug(target.name)}.md"


def _decoder(result: AuditResult, t: TargetResult) -> list[str]:
    ks = [str(k) for k in result.config.get("ks", [1, 4, 16])]
    head = ["set", "floor"] + [f"SSIM K={k}" for k in ks] + [f"PSNR K={k}" for k in ks]
    head += ["SNR (dB)", "dCor", "linkage AUC"]
    lines = [
        "## Learned decoder (black-box: the released tensors and the distribution)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in result.eval_sets:
        m = t.sets.get(name)
        if m is None:
            continue
        row = [name, _f(result.floor[name]["ssim"])]
        row += [_f(m["ssim"].get(k)) for k in ks] + [_f(m["psnr"].get(k), 1) for k in ks]
        row += [_f(m.get("snr_db"), 1), _f(m.get("dcor")), _f(t.linkage.get(name, {}).get("auc"))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _whitebox(result: AuditResult, t: TargetResult) -> list[str]:
    primary = result.eval_sets[0] if result.eval_sets else None
    wb = t.sets.get(primary or "", {}).get("whitebox") if primary else None
    if not wb:
        return []
    floor = float((wb.get("floor") or {}).get("ssim", result.floor[primary]["ssim"]))  # type: ignore[index]
    attacks = [a for a in ("decoder", "rmle", "hybrid") if a in wb]
    ks = sorted({k for a in attacks for k in wb[a].get("ssim", {})}, key=int)
    lines = [
        "",
        f"## White-box inversion ({primary}, {wb.get('images', '?')} images, the same releases for each)",
        "",
        "rMLE (He et al., ACSAC 2019): an image optimised so that the head's output explains the release "
        "under the transform's Gaussian likelihood, with a total-variation prior, started from the mean "
        "auxiliary image; hybrid: the same, started from (and anchored to) the decoder's reconstruction. "
        f"Budget: {_budget(wb.get('budget'))}. Mean-image floor on these images {floor:.3f}.",
        "",
        "| attack | " + " | ".join([f"SSIM K={k}" for k in ks] + [f"MSE K={k}" for k in ks]) + " |",
        "|---|" + "---|" * (2 * len(ks)),
    ]
    for a in attacks:
        row = [a] + [_f(wb[a]["ssim"].get(k)) for k in ks] + [_f(wb[a].get("mse", {}).get(k), 4) for k in ks]
        lines.append("| " + " | ".join(row) + " |")
    anchors = (wb.get("hybrid") or {}).get("anchor") or {}
    if anchors:
        picked = ", ".join(
            f"K={k}: {'∞ (the decoder unchanged)' if v is None else f'{v:g}'}" for k, v in anchors.items()
        )
        lines += ["", f"Hybrid anchor weight, picked on held-out auxiliary images: {picked}."]
    fisher = wb.get("fisher")
    if fisher:
        lines += [
            "",
            "### The bound no unbiased attacker beats (dFIL)",
            "",
            "Fisher information of the release about the image (Maeng et al., NeurIPS 2023): "
            "dFIL = tr(JᵀΣ⁻¹J)/d, estimated with random projections. Any unbiased reconstruction has a "
            "per-pixel mean squared error of at least 1/dFIL (pixels in [0, 1]); attackers with a prior "
            "(the decoder, the hybrid) are biased and may go below it, so it bounds what the release "
            "alone reveals, not every attack.",
            "",
            "| K | dFIL (± std. error) | MSE bound (unbiased) | PSNR ceiling (dB) | best measured MSE |",
            "|---|---|---|---|---|",
        ]
        for k, dfil in (fisher.get("dfil") or {}).items():
            measured = [wb[a].get("mse", {}).get(k) for a in attacks]
            best = min((float(v) for v in measured if v is not None), default=None)
            lines.append(
                f"| {k} | {_f(dfil)} ± {_f((fisher.get('stderr') or {}).get(k))} | "
                f"{_f((fisher.get('mse_bound') or {}).get(k), 4)} | "
                f"{_f((fisher.get('psnr_bound') or {}).get(k), 1)} | {_f(best, 4)} |"
            )
        lines += ["", f"{fisher.get('projections', '–')} projections per image."]
    return lines


def _budget(budget: Any) -> str:
    if not isinstance(budget, dict):
        return "–"
    return ", ".join(f"{k} {v}" for k, v in budget.items())


def _repeats(result: AuditResult, t: TargetResult) -> list[str]:
    rows = [
        (name, t.sets[name]["repeats"]) for name in result.eval_sets if t.sets.get(name, {}).get("repeats")
    ]
    if not rows:
        return []
    ks = [str(k) for k in rows[0][1].get("ks", [])]
    lines = [
        "",
        "## Repeated queries: fresh against sticky noise",
        "",
        "Fresh noise (the default): the attacker averages K releases of one image. Sticky noise (opt-in, "
        "`sticky_key=`): the noise is derived from a client-held key and the input's bytes, so K repeats "
        "are the same tensor and averaging gains nothing; the cost is that repeats of one image become "
        "linkable (AUC of telling two releases of the same image from releases of two images).",
        "",
        "| set | noise | " + " | ".join(f"SSIM K={k}" for k in ks) + " | same-image linkage AUC |",
        "|---|---|" + "---|" * (len(ks) + 1),
    ]
    for name, r in rows:
        link = r.get("linkage", {})
        for mode in ("fresh", "sticky"):
            cells = [_f(r.get(mode, {}).get("ssim", {}).get(k)) for k in ks]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + f" | {_f(link.get(f'{mode}_auc'))} |")
    return lines


def _peers(result: AuditResult, t: TargetResult) -> list[str]:
    peers = result.peers
    if not peers:
        return []
    png = str(peers.get("png") or "peers/peers-frontier.png")
    lines = ["", "## Peer defences at the same split", "", f"![frontier](../{png})", ""]
    verdicts = [v for v in peers.get("verdicts", []) if isinstance(v, str)]
    lines += [f"- {v}" for v in verdicts] or ["See report.md for the peers' table."]
    return lines


def peers_section(peers: dict[str, Any] | None) -> list[str]:
    """report.md's section on the peer defences (``veil audit --peers``); empty when they were not run."""
    if not peers:
        return []
    lines = [
        "",
        "## Peer defences at the same split",
        "",
        f"![frontier]({peers.get('png', 'peers_frontier.png')})",
        "",
        f"Every defence at the transform's split, attacked on {peers.get('set', 'the headline set')} by the "
        f"same decoder (and the hybrid with `--attacks hybrid`); {peers.get('metric', 'the task metric')} "
        f"retained against the clean model's; mean-image floor {_f(peers.get('floor'))}.",
        "",
        "| defence | knob | accuracy retained | strongest attacker SSIM | attacks |",
        "|---|---|---|---|---|",
    ]
    for row in peers.get("rows", []):
        flat = {f"{a} K={k}": v for a, per_k in (row.get("ssim") or {}).items() for k, v in per_k.items()}
        best = max((float(v) for v in flat.values() if v is not None), default=None)
        lines.append(
            f"| {row.get('family')} | {row.get('level'):g} | {_f(row.get('accuracy_retained'))} | "
            f"{_f(best)} | " + ", ".join(f"{k} {_f(v)}" for k, v in flat.items()) + " |"
        )
    lines += [""] + [f"- {v}" for v in peers.get("verdicts", []) if isinstance(v, str)]
    return lines


def target_page(result: AuditResult, t: TargetResult, picture: str | None) -> str:
    """The Markdown page of one target."""
    primary = result.eval_sets[0] if result.eval_sets else None
    alpha = "clean (no noise)" if t.alpha is None else f"α = {t.alpha:g}"
    lines = [
        f"# {t.name}",
        "",
        f"[← the whole audit](../report.md) · split `{t.split}` · {alpha} · "
        f"input {t.input_size}² · granularity {t.granularity or '–'}",
        "",
    ]
    if t.release_sha256:
        lines += [f"Release digest `{t.release_sha256}` (transform `{t.transform}`).", ""]
    if primary and primary in t.sets:
        floor = float(result.floor[primary]["ssim"])
        # (attack, SSIM, the floor of the images it was scored on): the white-box attacks see a subset
        scored = [(f"decoder K={k}", float(v), floor) for k, v in t.sets[primary]["ssim"].items()]
        wb = t.sets[primary].get("whitebox") or {}
        sub = float((wb.get("floor") or {}).get("ssim", floor))
        for a in ("rmle", "hybrid"):
            scored += [
                (f"{a} K={k}", float(v), sub) for k, v in ((wb.get(a) or {}).get("ssim") or {}).items()
            ]
        name, value, base = max(scored, key=lambda row: row[1] - row[2])
        verdict = "within" if value <= base + GOAL_MARGIN else "ABOVE"
        gap = f"{'+' if value >= base else '−'} {abs(value - base):.3f}"
        lines += [
            f"**Strongest attack on {primary}: {name}, SSIM {value:.3f}, floor {gap}: "
            f"{verdict} the mean-image floor {base:.3f} + {GOAL_MARGIN}.**",
            "",
        ]
    lines += _decoder(result, t) + _whitebox(result, t) + _repeats(result, t) + _peers(result, t)
    if picture:
        lines += ["", "## Pictures", "", f"![reconstructions of {t.name}]({picture})"]
    return "\n".join(lines) + "\n"


def write_pages(
    result: AuditResult, out: Path, pictures: dict[str, list[tuple[str, Tensor]]] | None
) -> dict[str, Path]:
    """``targets/<name>.md`` (+ ``.png``) for every target; returns the paths by target name."""
    from veil.audit.figures import plot_reconstructions

    (out / "targets").mkdir(parents=True, exist_ok=True)
    paths = {}
    for t in result.targets:
        rows = (pictures or {}).get(t.name) or []
        picture = None
        if rows:
            png = out / "targets" / f"{slug(t.name)}.png"
            plot_reconstructions(rows, png, title=f"{t.name}: what each attacker rebuilds")
            picture = png.name
        path = out / page_name(t)
        atomic_write_bytes(path, target_page(result, t, picture).encode())
        paths[t.name] = path
    return paths
