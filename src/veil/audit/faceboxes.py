"""FaceBoxes' audit: ``run_audit`` attacks clean FaceBoxes heads and FaceBoxes transforms.

It trains the reconstruction attacker (and the linkage verifier) against clean activations at each
``clean_split`` and against each transform, measures them on held-out images and writes the report.
Transforms made by ``veil.protect`` for any image model go through :mod:`veil.audit.generic`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm import tqdm

from veil.artifact import Transform, load_transform, release_digest
from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec, head_activations
from veil.audit.decoder import ARCHITECTURE
from veil.audit.linkage import LinkageConfig
from veil.audit.loop import AuditRun, Extras
from veil.audit.measure import floor as mean_floor
from veil.audit.measure import set_name
from veil.audit.report import AuditResult, TargetResult
from veil.errors import InputError
from veil.faceboxes.pipeline import transform_head
from veil.faceboxes.registry import create_model, split_model
from veil.imageio import list_images


@dataclass
class _Target:
    """One configuration to attack: the clean head at (split, size), or a transform."""

    name: str
    split: str
    size: int
    transform: Transform | None = None
    #: The transform's own (fine-tuned) head without its noise: what the head alone hides.
    noiseless: bool = False

    @property
    def noise(self) -> Transform | None:
        """The transform whose noise is attacked (None: clean activations)."""
        return None if self.noiseless else self.transform

    @property
    def head_key(self) -> str:
        """Which head makes the activations: the base model's at ``split``, or a transform's own."""
        tr = self.transform
        if tr is not None and tr.head_state is not None:
            return f"{self.split} head of {tr.path or id(tr)}"
        return self.split


def _audit_size(tr: Transform, size: int | None) -> int:
    own = int((tr.meta.get("input_size") or [0])[0])
    if own <= 0:
        raise InputError(f"{tr.path}: transform.json records no input_size; re-train it with `veil train`")
    if size is None or size == own:
        return own
    if tr.noise.granularity == "element":
        raise InputError(
            f"{tr.path}: a per-element transform is tied to its input size {own}; audit it at --size {own} "
            "(or omit --size)"
        )
    return size


def input_spec(size: int) -> dict[str, Any]:
    """FaceBoxes' input as an input spec (BGR, minus the 0-255 mean), for the white-box attacks."""
    from veil.faceboxes.registry import get_spec

    mean = [float(v) for v in get_spec("faceboxes").mean_bgr]
    return {"shape": [3, size, size], "dtype": "float32", "normalisation": {"mean": mean, "channels": "BGR"}}


def _sweep_rows(sweep: Path | None) -> list[dict[str, Any]]:
    if sweep is None:
        return []
    try:
        rows = json.loads(Path(sweep).read_text())["rows"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{sweep}: not a sweep.json written by `veil sweep` ({exc})") from None
    return [r for r in rows if r.get("alpha") is not None]


def _join_sweep(rows: list[dict[str, Any]], tr: Transform) -> dict[str, Any] | None:
    """The sweep row of this transform: same directory, else same folder name, else its alpha alone."""
    named = [r for r in rows if r.get("transform") and tr.path]
    for r in named:
        if Path(r["transform"]).resolve() == tr.path.resolve():  # type: ignore[union-attr]
            return r
    by_name = [r for r in named if Path(r["transform"]).name == tr.path.name]  # type: ignore[union-attr]
    if len(by_name) == 1:
        return by_name[0]
    same = [r for r in rows if math.isclose(float(r["alpha"]), tr.alpha)]
    return same[0] if len(same) == 1 else None


def run_audit(
    weights: str | Path,
    transforms: Sequence[str | Path],
    aux: str | Path,
    evals: Sequence[str | Path],
    out: str | Path,
    cfg: AttackConfig | None = None,
    link_cfg: LinkageConfig | None = None,
    sweep: str | Path | None = None,
    clean_splits: Sequence[str] = ("rdcl",),
    size: int | None = None,
    model_name: str = "faceboxes",
    max_eval: int | None = None,
    progress: bool = True,
    extras: Extras | None = None,
) -> AuditResult:
    """Attack clean activations and every transform; write report.md, metrics.json and the figures."""
    cfg = cfg or AttackConfig()
    if 1 not in cfg.ks or any(k < 1 for k in cfg.ks):
        raise InputError(f"AttackConfig.ks must contain 1 and only positive counts, got {cfg.ks}")
    cfg.ks = tuple(sorted(set(cfg.ks)))
    link_cfg = link_cfg or LinkageConfig(seed=cfg.seed, device=cfg.device)
    out = Path(out)
    model = create_model(model_name, weights)
    loaded = [load_transform(t, weights) for t in transforms]
    targets: list[_Target] = []
    sizes = sorted({_audit_size(t, size) for t in loaded}) or [size or cfg.input_size]
    for split in clean_splits:
        targets += [_Target(f"clean {split} @{s}", split, s) for s in sizes]
    for tr in loaded:
        s = _audit_size(tr, size)
        if not any(t.transform is None and t.split == tr.split and t.size == s for t in targets):
            targets.append(_Target(f"clean {tr.split} @{s}", tr.split, s))
    for tr in loaded:
        name = tr.path.name if tr.path else f"alpha {tr.alpha:g}"
        if tr.head_state is not None:  # the fine-tuned head alone, as a baseline for its noise
            targets.append(_Target(f"{name} head, no noise", tr.split, _audit_size(tr, size), tr, True))
        targets.append(_Target(name, tr.split, _audit_size(tr, size), tr))

    aux_paths = list_images(aux)[: cfg.max_images]
    aux_set = ImageSet.load(aux_paths, cfg.output_size, "aux")
    taken: set[str] = set()
    sets = {}
    for d in evals:
        paths = list_images(d)[:max_eval]
        name = set_name(Path(d), taken)
        sets[name] = ImageSet.load(paths, cfg.output_size, name)
    floor = mean_floor(aux_set, sets)
    heads: dict[str, nn.Module] = {}
    cache: dict[tuple[str, int, str], Tensor] = {}

    def acts(target: _Target, which: str) -> Tensor:
        """Clean activations of ``which`` images from the head that feeds ``target`` (cached)."""
        hk, s = target.head_key, target.size
        key = (hk, s, which)
        if key not in cache:
            if hk not in heads:
                tr = target.transform
                heads[hk] = (
                    transform_head(weights, tr, model_name)
                    if tr is not None and tr.head_state is not None
                    else split_model(model, target.split)[0].eval()
                )
            images = aux_set.images if which == "aux" else sets[which].images
            cache[key] = head_activations(
                heads[hk], images, s, desc=f"head {hk} @{s} ({which})", progress=progress, device=cfg.device
            )
        return cache[key]

    run = AuditRun(aux_set, sets, cfg, link_cfg, out, extras or Extras(), progress)
    for target in tqdm(targets, desc="audit", disable=not progress):
        a = acts(target, "aux")
        spec = NoiseSpec.of(target.noise.noise, a.shape[1:]) if target.noise else None
        res = TargetResult(
            name=target.name,
            kind="transform" if target.noise else "clean",
            split=target.split,
            input_size=target.size,
        )
        if target.noise is not None:
            tr = target.noise
            res.alpha, res.granularity = tr.alpha, tr.noise.granularity
            res.transform, res.mean_sigma = str(tr.path), float(tr.noise.mean_sigma())
            res.release_sha256 = release_digest(tr)
            row = _join_sweep(_sweep_rows(Path(sweep) if sweep else None), tr)
            if row is not None:
                res.ap, res.ap_retained = float(row["ap"]), float(row["retained"])
            own = int(tr.meta.get("input_size", [target.size])[0])
            if own != target.size:
                run.notes.append(
                    f"{target.name}: per-channel transform trained at {own}² audited at {target.size}² "
                    "(cheaper proxy; audit at its own size for the release numbers)."
                )
        side = (target.size, target.size)
        head = heads[target.head_key]
        run.attack(res, a, partial(acts, target), spec, head, input_spec(target.size), side)
    config = asdict(cfg) | {
        "architecture": ARCHITECTURE,
        "aux": str(aux),
        "aux_images": len(aux_paths),
        "linkage_steps": link_cfg.steps,
        "model": model_name,
        "weights": str(weights),
        "sweep": str(sweep) if sweep else None,
    }
    return run.finish(config, floor)
