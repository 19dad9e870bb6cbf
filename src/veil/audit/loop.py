"""One attacked configuration, whatever the model: every attack ``veil audit`` runs on it, in one place.

FaceBoxes' audit (:mod:`veil.audit.faceboxes`) and the audit of any ``veil.protect`` image transform
(:mod:`veil.audit.generic`) differ only in how they build heads and targets; both hand each target to
:func:`attack_target`, which trains the decoder (and its K-adapted copies), the linkage verifier, measures
every evaluation set and runs the attacks selected with ``veil audit --attacks`` (:class:`Extras`):

* ``rmle`` / ``hybrid`` / ``fisher`` — the white-box inversion and the Fisher-information bound
  (:mod:`veil.audit.inversion`, :mod:`veil.audit.fisher`; they need the head's gradients, so a target gives
  a :class:`Probe`: the head and the map from [0, 1] images to its input);
* ``sticky`` — repeated queries with fresh noise against the opt-in sticky (keyed) noise, and what the
  sticky mode costs in linkability (:mod:`veil.audit.repeats`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.attack import (
    AttackConfig,
    Attacker,
    ImageSet,
    NoiseSpec,
    adapt_attacker,
    decode,
    split_validation,
    train_attacker,
)
from veil.audit.choices import ATTACKS
from veil.audit.linkage import LinkageConfig, linkage_auc, train_verifier
from veil.audit.measure import SHOW, measure, released, slug, summary
from veil.audit.report import AuditResult, TargetResult, write_report
from veil.audit.store import save_attacker
from veil.errors import InputError


@dataclass
class Probe:
    """What a white-box attacker holds: the head (with gradients) and [0, 1] images -> the head's input."""

    head: nn.Module
    to_input: Callable[[Tensor], Tensor]


@dataclass
class Extras:
    """The attacks beyond the decoder and the linkage verifier, with their budgets."""

    attacks: tuple[str, ...] = ("decoder",)
    whitebox: Any = None  # veil.audit.inversion.WhiteboxConfig when rmle/hybrid/fisher are selected
    sticky_ks: tuple[int, ...] = ()  # K for the fresh-vs-sticky comparison (default: the audit's ks)
    #: ``veil audit --peers``: called once with the audit's images (aux, {name: eval set}) and its output
    #: folder after every target is attacked; returns the peers' record for metrics.json and the report.
    peers: Callable[[ImageSet, dict[str, ImageSet], Path], dict[str, Any]] | None = None

    @classmethod
    def parse(cls, text: str | None) -> tuple[str, ...]:
        """``--attacks decoder,rmle,...`` or ``all``, refused in one line when it names something else."""
        if text is None or not text.strip():
            return ("decoder",)
        names = [n.strip() for n in text.split(",") if n.strip()]
        if names == ["all"]:
            return ATTACKS
        bad = [n for n in names if n not in ATTACKS]
        if bad:
            raise InputError(
                f"--attacks: unknown attack {', '.join(bad)}; choose from {', '.join(ATTACKS)} or all"
            )
        return tuple(dict.fromkeys(["decoder", *names]))

    @property
    def whitebox_attacks(self) -> tuple[str, ...]:
        return tuple(a for a in self.attacks if a in ("rmle", "hybrid", "fisher"))


@dataclass
class Outcome:
    """What :func:`attack_target` adds beyond the result: pictures and notes for the report."""

    recon: list[tuple[str, Tensor]] = field(default_factory=list)  # rows for this target's pictures
    overview: Tensor | None = None  # the decoder's row for the audit-wide reconstructions.png
    notes: list[str] = field(default_factory=list)
    linked: bool = False  # a linkage pair was scored


@dataclass
class AuditRun:
    """What every target of one audit shares, and what the audit collects from them for the report."""

    aux: ImageSet
    sets: dict[str, ImageSet]
    cfg: AttackConfig
    link_cfg: LinkageConfig
    out: Path
    extras: Extras
    progress: bool = True
    results: list[TargetResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recon_rows: list[tuple[str, Tensor]] = field(default_factory=list)  # the audit-wide reconstructions.png
    pictures: dict[str, list[tuple[str, Tensor]]] = field(default_factory=dict)  # per target page
    linked: bool = False  # some target's images carried identities (the linkage attack ran)

    def __post_init__(self) -> None:
        (self.out / "attackers").mkdir(parents=True, exist_ok=True)
        if self.primary is not None:
            self.recon_rows.append(("original", self.sets[self.primary].targets[:SHOW]))

    @property
    def primary(self) -> str | None:
        return next(iter(self.sets), None)

    def attack(
        self,
        res: TargetResult,
        aux_acts: Tensor,
        acts: Callable[[str], Tensor],
        spec: NoiseSpec | None,
        head: nn.Module,
        input_spec: dict[str, Any],
        size: tuple[int, int],
    ) -> None:
        """Every selected attack on one target (``head`` at ``size`` per ``input_spec``); ``res`` is kept."""
        probe = None
        if self.extras.whitebox_attacks:
            from veil.audit.whitebox import input_map

            probe = Probe(head, input_map(input_spec, size))
        done = attack_target(
            res, aux_acts, acts, spec, self.aux, self.sets, self.cfg, self.link_cfg, self.out,
            extras=self.extras, probe=probe, progress=self.progress,
        )  # fmt: skip
        self.linked |= done.linked
        self.notes += done.notes
        self.pictures[res.name] = done.recon
        if done.overview is not None:
            label = res.name if res.alpha is None else f"{res.name} (α={res.alpha:g})"
            self.recon_rows.append((label, done.overview))
        self.results.append(res)
        if self.progress:
            tqdm.write(summary(res, self.primary))

    def finish(self, config: dict[str, Any], floor: dict[str, dict[str, float]]) -> AuditResult:
        """The peers (if asked), then report.md, metrics.json, the pages and the figures."""
        config = config | extras_config(self.extras)
        result = AuditResult(config, floor, self.results, list(self.sets), self.notes)
        if self.extras.peers is not None:
            result.peers = self.extras.peers(self.aux, self.sets, self.out)
        write_report(result, self.out, self.recon_rows, self.pictures)
        return result


def attack_target(
    res: TargetResult,
    aux_acts: Tensor,
    acts: Callable[[str], Tensor],
    spec: NoiseSpec | None,
    aux_set: ImageSet,
    sets: dict[str, ImageSet],
    cfg: AttackConfig,
    link_cfg: LinkageConfig,
    out: Path,
    *,
    extras: Extras | None = None,
    probe: Probe | None = None,
    progress: bool = True,
) -> Outcome:
    """Train and score every selected attack on one target; fills ``res`` in place."""
    extras = extras or Extras()
    done = Outcome()
    attacker = train_attacker(
        aux_acts, aux_set.targets, aux_set.paths, spec, cfg, f"attack {res.name}", progress
    )
    attackers: dict[int, list[Attacker]] = {1: [attacker]}
    adapt_curves = {}
    if spec is not None and cfg.adapt_steps > 0:
        for k in (k for k in cfg.ks if k > 1):
            adapted = adapt_attacker(attacker, k, aux_acts, aux_set.targets, aux_set.paths, cfg, progress)
            attackers[k] = [adapted]
            adapt_curves[str(k)] = adapted.curve
    save_attacker(attacker, out / "attackers" / f"{slug(res.name)}.safetensors")
    verifier = train_verifier(aux_acts, aux_set.paths, spec, link_cfg, f"verifier {res.name}", progress)
    primary = next(iter(sets), None)
    for name, image_set in sets.items():
        e = acts(name)
        res.sets[name] = measure(attackers, e, image_set, spec, cfg)
        link = linkage_auc(verifier, e, image_set.paths, spec, seed=cfg.seed + 11)
        if link is not None:
            res.linkage[name] = link
            done.linked = True
        if "sticky" in extras.attacks and spec is not None:
            from veil.audit.repeats import repeats_measure

            ks = extras.sticky_ks or cfg.ks
            res.sets[name]["repeats"] = repeats_measure(attackers, e, image_set, spec, ks=ks, seed=cfg.seed)
        if extras.whitebox_attacks and probe is not None and name == primary:
            res.sets[name]["whitebox"], rows = _whitebox(
                res,
                probe,
                attackers,
                e,
                image_set,
                aux_set,
                spec,
                extras,
                cfg.ks,
                progress,
                aux_acts,
                cfg.val_images,
            )
            done.recon += rows
    if extras.whitebox_attacks and probe is None:
        done.notes.append(f"{res.name}: no differentiable head for the white-box attacks; skipped.")
    res.training = {
        "curve": attacker.curve,
        "best_step": attacker.best_step,
        "best_val_ssim": attacker.best_val_ssim,
        "plateau_gain": attacker.plateau_gain,
        "converged": attacker.converged,
        "adapt_curves": adapt_curves,
    }
    if not attacker.converged:
        done.notes.append(
            f"{res.name}: the attacker's validation SSIM still rose by "
            f"{attacker.plateau_gain:.3f} in the last quarter of training; raise --steps."
        )
    if primary is not None:
        recon = decode(attacker.decoder, released(acts(primary)[:SHOW], spec, cfg.seed + 101))
        done.overview = (recon * 255).round().to(torch.uint8)
        if not done.recon:
            done.recon = [("original", sets[primary].targets[:SHOW]), ("decoder K=1", done.overview)]
    return done


def _whitebox(
    res: TargetResult,
    probe: Probe,
    attackers: dict[int, list[Attacker]],
    acts: Tensor,
    images: ImageSet,
    aux: ImageSet,
    spec: NoiseSpec | None,
    extras: Extras,
    ks: tuple[int, ...],
    progress: bool,
    aux_acts: Tensor,
    val_images: int,
) -> tuple[dict[str, Any], list[tuple[str, Tensor]]]:
    """rMLE, hybrid and the Fisher bound on the headline set (the same releases for every attack)."""
    from veil.audit.whitebox import WhiteboxConfig, whitebox_measure

    cfg = copy.copy(extras.whitebox or WhiteboxConfig())
    cfg.attacks = extras.whitebox_attacks
    prior = (aux.targets.float() / 255.0).mean(0)
    decoders = {k: v[0] for k, v in attackers.items()}
    wks = tuple(k for k in (1, 16) if k in ks) if spec is not None else (1,)
    # the hybrid picks its anchor on the decoder's held-out auxiliary persons (the attacker can measure it)
    _, val_idx = split_validation(aux.paths, val_images)
    calibration = (aux_acts[val_idx], aux.targets[val_idx]) if val_idx else None
    got = whitebox_measure(
        probe.head,
        probe.to_input,
        acts,
        images.targets,
        spec,
        decoders,
        prior,
        cfg,
        ks=wks or (1,),
        progress=progress,
        calibration=calibration,
    )
    n = int(got.metrics.get("images", 0)) or SHOW
    rows: list[tuple[str, Tensor]] = [("original", images.targets[: min(n, SHOW)])]
    for attack in ("decoder", "rmle", "hybrid"):  # K = 1 for each; the largest K the decoder's only
        recons = got.recons.get(attack, {})
        for k in sorted(recons)[:1] + (sorted(recons)[1:][-1:] if attack == "decoder" else []):
            rows.append((f"{attack} K={k}", recons[k][:SHOW]))
    return got.metrics, rows


def extras_config(extras: Extras | None) -> dict[str, Any]:
    """The extra attacks' selection and budgets, as recorded in metrics.json's ``config``."""
    from dataclasses import asdict, is_dataclass

    extras = extras or Extras()
    wb = extras.whitebox
    return {
        "attacks": list(extras.attacks),
        "whitebox": asdict(wb)
        if wb is not None and is_dataclass(wb) and not isinstance(wb, type) and extras.whitebox_attacks
        else None,
        "sticky_ks": list(extras.sticky_ks) if "sticky" in extras.attacks else None,
    }
