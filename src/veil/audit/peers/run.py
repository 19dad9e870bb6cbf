"""Peer defences side by side with veil's transforms: the same split, the same images, the same attacks.

For every defence (each peer family at each level, the clean split, and veil's transforms) this measures

* **accuracy retained**: the task's own metric of the defended model over the clean model's
  (``PeerTask.score``; a noisy defence averaged over ``PeerTask.draws`` draws);
* **attacker SSIM**: the audit's decoder (:func:`veil.audit.attack.train_attacker`, K = 1; K > 1 by
  :func:`veil.audit.attack.adapt_attacker` on the mean of K releases). A deterministic release (nopeek,
  disco, blur, downscale, clean) is the same tensor at every query, so its K > 1 equals K = 1 and is
  reported as such. ``extra_attack`` (injected: the lead's white-box hybrid) adds more attacks per row.

Attack images are the audit's ``--aux`` / ``--eval`` :class:`veil.audit.attack.ImageSet` s, turned into
model inputs by ``PeerTask.to_input`` at the audit size; the mean-image floor is the audit's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
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
    score,
    train_attacker,
)
from veil.audit.measure import floor as mean_floor
from veil.audit.peers.baselines import build_peers
from veil.audit.peers.common import (
    DEFAULT_LEVELS,
    FAMILIES,
    PeerConfig,
    PeerTask,
    check_families,
    deterministic,
)
from veil.audit.peers.frontier import plot_frontier, verdicts
from veil.errors import InputError
from veil.protection import protect


@dataclass
class AttackTarget:
    """What an injected extra attack gets for one defence (the attacker knows head, mu, sigma, mask)."""

    name: str
    head: nn.Module  # model input -> clean activation (blur / downscale: the wrapped head)
    spec: NoiseSpec
    noisy: bool  # False: the release is deterministic (K is moot)
    aux_acts: Tensor
    eval_acts: Tensor
    aux: ImageSet
    eval: ImageSet
    decoder: Attacker  # the trained K = 1 decoder (the hybrid's starting point)
    to_input: Callable[[Sequence[Tensor], int], Tensor]
    size: int
    cfg: AttackConfig


#: ``extra_attack(target) -> {attack name: {"1": SSIM, "16": SSIM, ...}}``.
ExtraAttack = Callable[[AttackTarget], dict[str, dict[str, float]]]


@torch.no_grad()
def head_acts(
    head: nn.Module,
    images: Sequence[Tensor],
    to_input: Callable[[Sequence[Tensor], int], Tensor],
    size: int,
    batch: int = 32,
) -> Tensor:
    """Clean activations [N, C, h, w] of ``images`` through ``to_input`` at ``size``."""
    head.eval()
    out = [head(to_input(images[i : i + batch], size)).float() for i in range(0, len(images), batch)]
    return torch.cat(out)


def is_noisy(spec: NoiseSpec) -> bool:
    return bool(((spec.sigma > 0) & spec.keep).any())


def retained(p: nn.Module, task: PeerTask, clean: float, noisy: bool) -> tuple[float, float]:
    """(the task metric of ``p``, averaged over draws when noisy; that / the clean model's)."""
    draws = max(1, int(task.draws)) if noisy else 1
    torch.manual_seed(0)
    value = sum(task.score(p.eval()) for _ in range(draws)) / draws
    return value, value / clean if clean else float("nan")


def attack(
    name: str,
    p: Any,
    task: PeerTask,
    aux: ImageSet,
    ev: ImageSet,
    size: int,
    cfg: AttackConfig,
    extra_attack: ExtraAttack | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """SSIM per attack per K on ``ev`` of the audit's decoder trained on ``aux`` against ``p``'s release."""
    a = head_acts(p.head, aux.images, task.to_input, size)
    e = head_acts(p.head, ev.images, task.to_input, size)
    spec = NoiseSpec.of(p.noise, a.shape[1:])
    noisy = is_noisy(spec)
    base = train_attacker(a, aux.targets, aux.paths, spec, cfg, f"attack {name}", progress)
    k1 = float(score(base, e, ev.targets, k=1, seed=cfg.seed + 101)[0].mean())
    decoder: dict[str, float] = {}
    for k in cfg.ks:
        if k == 1 or not noisy:
            decoder[str(k)] = k1
            continue
        best = float(score(base, e, ev.targets, k=k, seed=cfg.seed + 101 * k)[0].mean())
        if cfg.adapt_steps > 0:
            adapted = adapt_attacker(base, k, a, aux.targets, aux.paths, cfg, progress)
            best = max(best, float(score(adapted, e, ev.targets, k=k, seed=cfg.seed + 101 * k)[0].mean()))
        decoder[str(k)] = best
    ssims: dict[str, dict[str, float]] = {"decoder": decoder}
    if extra_attack is not None:
        target = AttackTarget(name, p.head, spec, noisy, a, e, aux, ev, base, task.to_input, size, cfg)
        for attack_name, per_k in extra_attack(target).items():
            ssims[attack_name] = {str(k): float(v) for k, v in per_k.items()}
    return {"ssim": ssims, "noisy": noisy, "converged": base.converged, "wire": list(a.shape[1:])}


def strongest(ssims: dict[str, dict[str, float]]) -> float:
    """The best SSIM any attack reaches at any K (what the frontier plots)."""
    values = [v for per_k in ssims.values() for v in per_k.values() if math.isfinite(v)]
    return max(values) if values else float("nan")


def run_peers(
    model: nn.Module,
    split: str,
    task: PeerTask,
    aux: ImageSet,
    ev: ImageSet,
    cfg: AttackConfig,
    families: Sequence[str] = FAMILIES,
    levels: Mapping[str, Sequence[float]] | None = None,
    transforms: Sequence[str | Path] = (),
    peer_cfg: PeerConfig | None = None,
    size: int | None = None,
    extra_attack: ExtraAttack | None = None,
    out: str | Path | None = None,
    model_name: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Every peer family at its levels, the clean split and veil's ``transforms``, attacked alike.

    Returns ``{"rows": [...], "floor": SSIM, "verdicts": [...], "png": path | None, ...}`` (JSON-able);
    with ``out`` writes ``peers.json`` and ``peers-frontier.png`` there. ``size``: the audit input size
    (default: the task batches' width). ``transforms``: veil's transform directories for this model
    (``task.load(path)`` or ``veil.load``).
    """
    levels = {f: tuple(v) for f, v in (levels or {}).items()}
    check_families(families, levels)
    if not families and not transforms:
        raise InputError("peers: nothing to compare: give at least one family or transform")
    if 1 not in cfg.ks:
        raise InputError(f"AttackConfig.ks must contain 1, got {cfg.ks}")
    peer_cfg = peer_cfg or PeerConfig(seed=cfg.seed, progress=progress)
    size = int(size or task.batches[0].shape[-1])
    floor = float(mean_floor(aux, {"eval": ev})["eval"]["ssim"])
    clean_model = model.eval()
    with torch.no_grad():
        clean = float(task.score(clean_model))
    if not (math.isfinite(clean) and clean > 0):
        raise InputError(
            f"peers: the clean model scores {clean} on {task.metric or 'the task metric'}: nothing to retain "
            "(wrong weights or an empty evaluation set?)"
        )
    rows: list[dict[str, Any]] = []

    def add(family: str, level: float, p: Any, info: dict[str, Any]) -> None:
        name = f"{family} {level:g}" if family != "clean" else "clean"
        measured = attack(name, p, task, aux, ev, size, cfg, extra_attack, progress)
        value, kept = retained(p, task, clean, measured["noisy"])
        row = {"family": family, "level": level, "metric": value, "accuracy_retained": kept, **measured}
        row |= {"strongest": strongest(measured["ssim"]), "floor": floor, "info": info}
        rows.append(row)
        if progress:
            tqdm.write(
                f"{name}: retained {kept:.3f}, SSIM "
                + " ".join(f"{a} K={k}:{v:.3f}" for a, d in row["ssim"].items() for k, v in d.items())
            )

    base = deterministic(
        protect(model, split=split, example=task.batches[0], normalisation=task.normalisation)
    )
    add("clean", 0.0, base, {})
    for fam in families:
        chosen = levels.get(fam, DEFAULT_LEVELS[fam])
        for level, p in build_peers(model, split, fam, chosen, task, peer_cfg):
            add(fam, level, p, {k: v for k, v in p.meta["peer"].items() if k not in ("family", "level")})
    for path in transforms:
        q = task.load(path) if task.load is not None else _load(path, model)
        add("veil", float(q.alpha), q, {"transform": Path(path).name})
    result: dict[str, Any] = {
        "model": model_name,
        "split": split,
        "size": size,
        "task": task.name,
        "metric": task.metric,
        "clean_metric": clean,
        "floor": floor,
        "eval_images": len(ev.paths),
        "aux_images": len(aux.paths),
        "attack": {k: v for k, v in asdict(cfg).items() if k != "device"},
        "peers": asdict(peer_cfg),
        "rows": rows,
        "verdicts": verdicts(rows),
        "png": None,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        title = f"{model_name or task.name} at {split}: attacker SSIM vs {task.metric or 'metric'} retained"
        result["png"] = str(plot_frontier(rows, floor, out / "peers-frontier.png", title))
        (out / "peers.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def _load(path: str | Path, model: nn.Module) -> Any:
    from veil.audit.inputs import load_protected

    return load_protected(Path(path), model)
