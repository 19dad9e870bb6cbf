"""Peer defences, re-implemented as small baselines on veil's split, data and attacks.

Each builder returns a :class:`veil.protection.Protected` (``head``, ``noise``, ``tail``, ``release``)
made in memory for any image model at a split point, so the audit's attacker
(:func:`veil.audit.attack.train_attacker`, ``NoiseSpec.of(p.noise, shape)``) applies unchanged. A
deterministic defence has ``sigma = 0`` everywhere (``rho`` far below zero: ``tanh`` saturates, sigma is
exactly 0), so its release is ``head(x) + mu``; pruning is the noise's ``keep`` mask (pruned channels are
the constant ``mu``). These are re-implementations with the papers' ideas, not the authors' code:

* ``gaussian`` (level: sigma relative to the activation's std): one sigma for every element, mu = 0,
  nothing suppressed, nothing trained -- the textbook Gaussian mechanism on the activation.
* ``shredder`` (level: alpha): Mireshghallah et al., "Shredder: Learning Noise Distributions to Protect
  Inference Privacy", ASPLOS 2020. Learned additive noise (per element, as Shredder's noise tensor) with
  the model frozen (head and tail), trained by :meth:`Protected.fit` with ``suppress_from=1.0`` (no
  suppression); alpha trades the task loss against ``-log mean sigma`` (Shredder's noise-magnitude term).
* ``nopeek`` (level: lambda): Vepakomma et al., "NoPeek: Information leakage reduction to share
  activations in distributed deep learning", ICDMW 2020. Head and tail fine-tuned with the distillation
  loss + lambda * dCor(input, activation) on each batch (the differentiable sample distance
  correlation); no noise.
* ``disco`` (level: the pruned share of channels): Singh et al., "DISCO: Dynamic and Invariant
  Sensitive Channel Obfuscation for deep neural networks", CVPR 2021. Soft per-channel gates are trained
  against an online reconstruction adversary (:class:`veil.audit.online.OnlineAttacker`, on a fixed
  input scale so a gate is visible to it) and the task loss; the lowest-gated channels are pruned and the
  tail fine-tuned. Simplification: the pruning is static (one mask for every input), DISCO's is
  input-dependent.
* ``blur`` (level: the Gaussian blur's sigma in input pixels) and ``downscale`` (level: the factor f,
  down by f with anti-aliasing and back up, bilinear): the image is transformed on the client before
  the head (the head is wrapped), no noise; the tail is fine-tuned on the transformed inputs for
  ``PeerConfig.tail_steps`` steps (0: not).

Every training peer distils from the clean model (``p.teacher``), so it needs only unlabeled task inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.peers.common import (
    DEFAULT_LEVELS,
    FAMILIES,
    FLAT,
    KNOBS,
    PeerConfig,
    PeerTask,
    activation_std,
    base,
    check_families,
    deterministic,
    fit_noise,
)
from veil.audit.peers.filters import blur, downscale
from veil.audit.peers.pruning import disco, disco_gates
from veil.protection import Protected
from veil.protection.objectives import resolve

__all__ = ["BUILDERS", "DEFAULT_LEVELS", "FAMILIES", "KNOBS", "PeerConfig", "PeerTask", "build_peers"]


# -- the families ------------------------------------------------------------------------------------
def gaussian(model: nn.Module, split: str, level: float, task: PeerTask, cfg: PeerConfig) -> Protected:
    """One sigma (``level`` x the activation's std) for every element, mu = 0, no training."""
    p = base(model, split, task)
    std = activation_std(p, task.batches[:4])
    sigma = float(level) * std
    with torch.no_grad():
        p.noise.mu.zero_()
        p.noise.keep.fill_(True)
        if sigma > 0:  # sigma = smin + (smax - smin) * (1 + tanh(0)) / 2 = smax / 2
            p.noise.smax = 2.0 * sigma
            p.noise.rho.zero_()
        else:
            p.noise.rho.fill_(FLAT)
    p.meta["peer"] = {"sigma": sigma, "sigma_relative": float(level), "activation_std": std}
    return p


def shredder(model: nn.Module, split: str, level: float, task: PeerTask, cfg: PeerConfig) -> Protected:
    """Learned per-element additive noise, model frozen, no suppression (Shredder)."""
    p = base(model, split, task, alpha=float(level), gran="element")
    fit = fit_noise(p, task, cfg, cfg.steps, train_tail=False, train_head=False, suppress_from=1.0)
    p.meta["peer"] = {"mean_sigma": fit["mean_sigma"], "task_last": fit["task_last"]}
    return p


def dcor_loss(x: Tensor, y: Tensor) -> Tensor:
    """Differentiable sample distance correlation of paired batches (NoPeek's penalty; biased V-form)."""

    def centred(z: Tensor) -> Tensor:
        d = torch.cdist(z.flatten(1).float(), z.flatten(1).float())
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x), centred(y)
    dcov = (a * b).mean().clamp_min(0)
    denom = ((a * a).mean() * (b * b).mean()).sqrt().clamp_min(1e-12)
    return (dcov / denom).clamp_min(1e-12).sqrt()


def nopeek(model: nn.Module, split: str, level: float, task: PeerTask, cfg: PeerConfig) -> Protected:
    """Head and tail fine-tuned with distillation + lambda * dCor(input, activation); no noise (NoPeek)."""
    p = deterministic(base(model, split, task))
    _, task_fn = resolve(None, p.task)
    head, tail = p.head.requires_grad_(True), p.tail.requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": list(head.parameters()), "lr": cfg.lr_head},
            {"params": list(tail.parameters()), "lr": cfg.lr_tail},
        ]
    )
    first: list[float] = []
    last: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"nopeek lambda={level:g}", disable=not cfg.progress, leave=False)
    for step in bar:
        x = task.batches[step % len(task.batches)]
        with torch.no_grad():
            clean = p.teacher(x)
        act = head(x)
        dc = dcor_loss(x, act)
        loss = task_fn(tail(act), clean, x) + float(level) * dc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        (first if step < 5 else last).append(float(dc.detach()))
        last[:] = last[-5:]
    p.eval().requires_grad_(False)
    p.head_trained = True
    p.meta["peer"] = {
        "dcor_first": sum(first) / max(1, len(first)),
        "dcor_last": sum(last) / max(1, len(last)) if last else float("nan"),
    }
    return p


BUILDERS: dict[str, Callable[[nn.Module, str, float, PeerTask, PeerConfig], Protected]] = {
    "gaussian": gaussian,
    "shredder": shredder,
    "nopeek": nopeek,
    "disco": disco,
    "blur": blur,
    "downscale": downscale,
}


def build_peers(
    model: nn.Module,
    split: str,
    family: str,
    levels: Sequence[float],
    task: PeerTask,
    cfg: PeerConfig | None = None,
) -> list[tuple[float, Protected]]:
    """One defence per level of ``family`` on a copy of ``model`` at ``split`` (the model is not changed)."""
    cfg = cfg or PeerConfig()
    check_families([family], {family: levels})
    model = copy.deepcopy(model).eval()
    gates = disco_gates(model, split, task, cfg) if family == "disco" else None
    out = []
    for level in levels:
        torch.manual_seed(cfg.seed)
        if family == "disco":
            p = disco(model, split, float(level), task, cfg, gates)
        else:
            p = BUILDERS[family](model, split, float(level), task, cfg)
        p.meta["peer"] = {"family": family, "level": float(level), "knob": KNOBS[family], **p.meta["peer"]}
        out.append((float(level), p))
    return out
