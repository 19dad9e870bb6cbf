"""The privacy audit of transforms made by :func:`veil.protect` for any image model.

The same attack as FaceBoxes' (:func:`veil.audit.run_audit`): a fixed decoder, sized from the wire
(C, h, w) and the reconstruction size, is trained on the auxiliary images' clean head activations with a
fresh draw from the transform's noise every step (the distribution ``p.release`` samples from: the
attacker knows mu, sigma and the mask, never a request's noise). Baselines: the clean head at the same
split (and any ``clean_splits``), and the transform's fine-tuned head without noise when fit trained it.
Images go through the transform's input spec (:mod:`veil.audit.inputs`). The linkage verifier runs on
any (C, h, w) wire; it needs LFW-style names (``Person_Name_0001.jpg``) and is reported as not
applicable without them. Writes the report FaceBoxes' audit writes, with the model, split, alpha and
wire shape of each transform named.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from tqdm import tqdm

from veil.artifact import release_digest
from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec
from veil.audit.decoder import ARCHITECTURE, plan
from veil.audit.inputs import activations, image_spec, load_protected, read_transform
from veil.audit.linkage import LinkageConfig
from veil.audit.loop import AuditRun, Extras
from veil.audit.measure import floor as mean_floor
from veil.audit.measure import set_name
from veil.audit.report import AuditResult, TargetResult
from veil.errors import InputError
from veil.imageio import list_images


@dataclass
class _Target:
    """One configuration to attack: a clean head, a fine-tuned head without noise, or a transform."""

    name: str
    split: str
    head: nn.Module
    head_key: str
    spec: dict[str, Any]  # the input spec the head's images are prepared with
    size: tuple[int, int]
    protected: Any = None  # the loaded Protected whose noise is attacked (None: no noise)
    path: Path | None = None
    meta: dict[str, Any] | None = None  # transform.json of the transform this target comes from


def _targets(
    loaded: Sequence[tuple[Path, Any]], model: nn.Module, clean_splits: Sequence[str], size: int | None
) -> list[_Target]:
    from veil.protection.store import example_from
    from veil.split.graph import cut

    targets: list[_Target] = []
    clean_heads: dict[tuple[str, str], _Target] = {}

    def clean(split: str, p: Any, path: Path) -> None:
        spec = p.meta["input_spec"]
        h, w = audit_size(path, p, size)
        key = (split, f"{spec} @{h}x{w}")
        if key in clean_heads:
            return
        if split == p.split and not p.head_trained:
            head = p.head
        else:
            head = cut(copy.deepcopy(model), split, example_from(spec))[0].eval()
        t = _Target(f"clean {split} @{h}x{w}", split, head, f"clean {key}", spec, (h, w), meta=p.meta)
        clean_heads[key] = t
        targets.append(t)

    for path, p in loaded:
        for split in [str(p.split), *clean_splits]:
            clean(split, p, path)
    for path, p in loaded:
        spec, name = p.meta["input_spec"], path.name
        hw = audit_size(path, p, size)
        if p.head_trained:  # the fine-tuned head alone, as a baseline for its noise
            targets.append(
                _Target(
                    f"{name} head, no noise", str(p.split), p.head, str(path), spec, hw, None, path, p.meta
                )
            )
        head_key = str(path) if p.head_trained else f"clean {(str(p.split), f'{spec} @{hw[0]}x{hw[1]}')}"
        targets.append(_Target(name, str(p.split), p.head, head_key, spec, hw, p, path, p.meta))
    return targets


def audit_size(path: Path, p: Any, size: int | None) -> tuple[int, int]:
    """(H, W) to audit at: the input spec's, or ``size`` squared for a per-channel transform."""
    own = (int(p.meta["input_spec"]["shape"][1]), int(p.meta["input_spec"]["shape"][2]))
    if size is None or (size, size) == own:
        return own
    if p.noise.granularity != "channel":
        raise InputError(
            f"{path}: a per-element transform is tied to its input size {own[0]}x{own[1]}; omit --size"
        )
    return size, size


def load_generic(paths: Sequence[str | Path], model: nn.Module) -> list[tuple[Path, Any]]:
    """Each generic image transform rebuilt around ``model`` (``veil.load``), refusals in one line."""
    loaded = []
    for path in paths:
        tr = read_transform(path)
        image_spec(tr)
        loaded.append((Path(path), load_protected(Path(path), model)))
    return loaded


def _describe(target: _Target, res: TargetResult, act: Tensor, out_size: int) -> None:
    meta = target.meta or {}
    res.model = str(meta.get("model")) if meta else None
    res.input_shape = [int(s) for s in target.spec["shape"]]
    res.wire_shape = [int(s) for s in act.shape[1:]]
    fold, body, stages = plan((int(act.shape[2]), int(act.shape[3])), out_size)
    res.decoder = {
        "in_channels": int(act.shape[1]),
        "in_hw": [int(act.shape[2]), int(act.shape[3])],
        "out_size": out_size,
        "fold": fold,
        "body": body,
        "stages": stages,
    }


def run_generic_audit(
    loaded: Sequence[tuple[Path, Any]],
    model: nn.Module,
    aux: str | Path,
    evals: Sequence[str | Path],
    out: str | Path,
    cfg: AttackConfig | None = None,
    link_cfg: LinkageConfig | None = None,
    clean_splits: Sequence[str] = (),
    size: int | None = None,
    model_spec: str = "",
    weights: str | Path | None = None,
    max_eval: int | None = None,
    progress: bool = True,
    extras: Extras | None = None,
) -> AuditResult:
    """Attack clean activations and every loaded transform ``(path, veil.load(path, model))``.

    ``size``: audit per-channel transforms (and the clean baselines) at size x size instead of the input
    spec's (H, W); ``clean_splits``: more clean baselines at other split points of ``model``.
    """
    cfg = cfg or AttackConfig()
    if 1 not in cfg.ks or any(k < 1 for k in cfg.ks):
        raise InputError(f"AttackConfig.ks must contain 1 and only positive counts, got {cfg.ks}")
    if not loaded:
        raise InputError("a generic audit needs at least one transform directory (--transform)")
    cfg.ks = tuple(sorted(set(cfg.ks)))
    link_cfg = link_cfg or LinkageConfig(seed=cfg.seed, device=cfg.device)
    out = Path(out)
    targets = _targets(loaded, model, clean_splits, size)
    aux_paths = list_images(aux)[: cfg.max_images]
    aux_set = ImageSet.load(aux_paths, cfg.output_size, "aux")
    taken: set[str] = set()
    sets = {}
    for d in evals:
        name = set_name(Path(d), taken)
        sets[name] = ImageSet.load(list_images(d)[:max_eval], cfg.output_size, name)
    floor = mean_floor(aux_set, sets)
    cache: dict[tuple[str, str], Tensor] = {}

    def acts(target: _Target, which: str) -> Tensor:
        key = (target.head_key, which)
        if key not in cache:
            images = aux_set.images if which == "aux" else sets[which].images
            desc = f"head {target.name} ({which})"
            cache[key] = activations(
                target.head, images, target.spec, target.size, desc=desc, progress=progress, device=cfg.device
            )
        return cache[key]

    run = AuditRun(aux_set, sets, cfg, link_cfg, out, extras or Extras(), progress)
    for target in tqdm(targets, desc="audit", disable=not progress):
        a = acts(target, "aux")
        p = target.protected
        spec = NoiseSpec.of(p.noise, a.shape[1:]) if p is not None else None
        res = TargetResult(
            name=target.name,
            kind="transform" if p is not None else "clean",
            split=target.split,
            input_size=target.size[0],
        )
        _describe(target, res, a, cfg.output_size)
        if p is not None:
            tr = read_transform(target.path)
            res.alpha, res.granularity = float(p.alpha), p.noise.granularity
            res.transform, res.mean_sigma = str(target.path), float(p.noise.mean_sigma())
            res.release_sha256 = release_digest(tr)
        run.attack(res, a, partial(acts, target), spec, target.head, target.spec, target.size)
    if not run.linked:
        run.notes.append(
            "Linkage: not applicable here, no auxiliary or evaluation image names carry an identity "
            "(LFW-style Person_Name_0001.jpg); the verifier works on any (C, h, w) wire when they do."
        )
    config = asdict(cfg) | {
        "architecture": ARCHITECTURE,
        "aux": str(aux),
        "aux_images": len(aux_paths),
        "linkage_steps": link_cfg.steps,
        "model": model_spec,
        "weights": str(weights) if weights else None,
        "sweep": None,
        "kind": "generic",
        "transforms": [str(path) for path, _ in loaded],
    }
    return run.finish(config, floor)
