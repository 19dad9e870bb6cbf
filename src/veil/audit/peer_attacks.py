"""``veil audit --peers``: the peer defences run inside the audit, attacked by the decoder and the hybrid.

:func:`veil.audit.peers.run.run_peers` builds each peer defence at the audited transform's split and
trains the audit's decoder against it; :func:`hybrid_attack` adds the white-box hybrid
(:mod:`veil.audit.inversion`) on the same releases, so every point of the frontier faces the attacks
veil's own transforms face. A deterministic release (NoPeek, DISCO, blur, downscale) is inverted through
the head *and* its fixed post-processing (pruned channels held at mu), so the attacker optimises against
exactly what it receives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec, split_validation
from veil.errors import InputError


class _Released(nn.Module):
    """head(x), then the defence's fixed (noise-free) release: kept elements + mu, the others mu."""

    def __init__(self, head: nn.Module, spec: NoiseSpec) -> None:
        super().__init__()
        self.head, self.spec = head, spec

    def forward(self, x: Tensor) -> Tensor:
        return release_fixed(self.head(x), self.spec)


def release_fixed(acts: Tensor, spec: NoiseSpec) -> Tensor:
    mu, keep = spec.mu.to(acts.device), spec.keep.to(acts.device)
    return torch.where(keep, acts + mu, mu.expand_as(acts))


def hybrid_attack(
    spec_dict: dict[str, Any], whitebox: Any, ks: Sequence[int]
) -> Callable[[Any], dict[str, Any]]:
    """The ``extra_attack`` of :func:`run_peers`: the hybrid's SSIM per K on the peers' evaluation images.

    ``spec_dict``: the input spec the images are prepared with (the audited transform's), so the
    white-box attacker maps [0, 1] images to model inputs as the audit does.
    """
    from veil.audit.whitebox import input_map, whitebox_measure

    def attack(target: Any) -> dict[str, Any]:
        cfg = copy.copy(whitebox)
        cfg.attacks = ("hybrid",)
        to_input = input_map(spec_dict, (target.size, target.size))
        head, spec, acts, aux_acts = target.head, target.spec, target.eval_acts, target.aux_acts
        if not target.noisy:  # invert what is received: the head plus the fixed release
            head = _Released(target.head, target.spec)
            acts, aux_acts, spec = release_fixed(acts, spec), release_fixed(aux_acts, spec), None
        _, val = split_validation(target.aux.paths, target.cfg.val_images)
        calibration = (aux_acts[val], target.aux.targets[val]) if val else None
        prior = (target.aux.targets.float() / 255.0).mean(0)
        got = whitebox_measure(
            head,
            to_input,
            acts,
            target.eval.targets,
            spec,
            {1: target.decoder},
            prior,
            cfg,
            ks=tuple(ks) if target.noisy else (1,),
            progress=False,
            calibration=calibration,
        )
        ssim = dict(got.metrics["hybrid"]["ssim"])
        for k in ks:  # a deterministic release: every K sees the same tensor
            ssim.setdefault(str(k), ssim["1"])
        return {"hybrid": ssim}

    return attack


def peers_hook(
    model_spec: str,
    weights: Path | None,
    split: str,
    spec_dict: dict[str, Any],
    transforms: Sequence[Path],
    families: Sequence[str],
    levels: dict[str, tuple[float, ...]],
    cfg: AttackConfig,
    size: int,
    whitebox: Any,
    progress: bool,
) -> Callable[[ImageSet, dict[str, ImageSet], Path], dict[str, Any]]:
    """What :class:`veil.audit.loop.Extras` calls after the audit: the frontier on the headline set."""
    from veil.models.public import resolve_entry

    entry = resolve_entry(model_spec)
    if entry.peers is None:
        raise InputError(
            f"--peers needs a model whose task scores a defended model (ModelEntry.peers): {model_spec!r} "
            "has none; the shipped ones are mask-compliance and faceboxes"
        )
    task = entry.peers()

    def hook(aux: ImageSet, sets: dict[str, ImageSet], out: Path) -> dict[str, Any]:
        from veil.audit.inputs import load_model
        from veil.audit.peers.run import run_peers

        model = load_model(model_spec, weights)
        headline = next(iter(sets.values()))
        pcfg = copy.copy(cfg)
        pcfg.ks = tuple(k for k in (1, 16) if k in cfg.ks) or (1,)
        extra = hybrid_attack(spec_dict, whitebox, pcfg.ks) if whitebox is not None else None
        result = run_peers(
            model,
            split,
            task,
            aux,
            headline,
            pcfg,
            families=families,
            levels=levels,
            transforms=transforms,
            size=size,
            extra_attack=extra,
            out=out / "peers",
            model_name=model_spec,
            progress=progress,
        )
        result["png"] = "peers/peers-frontier.png"
        result["set"] = headline.name
        return result

    return hook


def parse_levels(text: str | None, families: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``--peer-levels gaussian=0.5:1:2,blur=1:4`` -> {family: levels}; one line on a bad entry."""
    if not text:
        return {}
    out: dict[str, tuple[float, ...]] = {}
    for part in text.split(","):
        name, _, values = part.partition("=")
        name = name.strip()
        try:
            levels = tuple(float(v) for v in values.split(":") if v.strip())
        except ValueError:
            levels = ()
        if name not in families or not levels:
            raise InputError(
                f"--peer-levels {part!r}: write FAMILY=L1:L2:... for a family given to --peers "
                f"({', '.join(families)}), e.g. gaussian=0.5:1:2"
            )
        out[name] = levels
    return out
