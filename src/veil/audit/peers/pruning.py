"""DISCO-style channel pruning (Singh et al., "DISCO: Dynamic and Invariant Sensitive Channel Obfuscation
for deep neural networks", CVPR 2021), re-implemented with a static mask.

Soft per-channel gates ``g`` are trained in a min-max game: the release while training is
``g * a + (1 - g) * mean`` (g = 0: the channel is pruned, it sends its mean), the loss is the
distillation loss plus ``disco_weight`` x the privacy term of an online reconstruction adversary
(veil's :class:`veil.audit.online.OnlineAttacker`, one decoder step per step on the detached release,
reading releases on the clean activations' *fixed* scale, since its per-batch standardisation would undo
a gate). Then the requested share of channels with the lowest gates is pruned (the noise's ``keep``
mask; pruned channels become their constant mean, sigma = 0) and the tail is fine-tuned. DISCO's pruning
network is input-dependent; this mask is one for every input (the documented simplification).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.peers.common import PeerConfig, PeerTask, base, deterministic, tune_tail
from veil.protection import Protected
from veil.protection.objectives import resolve


def _scaled_attacker(p: Protected, images: Tensor, seed: int) -> Any:
    """DISCO's adversary: veil's online decoder, reading releases on the clean activations' fixed scale
    (its per-batch standardisation would undo a channel gate)."""
    from veil.audit.online import OnlineAttacker

    class _Fixed(OnlineAttacker):
        scale: tuple[Tensor, Tensor]

        def _standardise(self, release: Tensor) -> Tensor:
            mean, std = self.scale
            return (release.float() - mean) / std

    adv = _Fixed.for_protected(p, images, seed=seed, width=32)
    assert isinstance(adv, _Fixed)  # for_protected builds cls
    with torch.no_grad():
        acts = p.head(images).float()
    adv.scale = (acts.mean((0, 2, 3), keepdim=True), acts.std((0, 2, 3), keepdim=True).clamp_min(1e-6))
    return adv


def disco_gates(model: nn.Module, split: str, task: PeerTask, cfg: PeerConfig) -> tuple[Tensor, Tensor]:
    """(per-channel gate in (0, 1), per-channel mean activation) from DISCO's min-max game.

    Release while training: ``g * a + (1 - g) * mean`` (g = 0: the channel is pruned). Loss: the
    distillation loss + ``disco_weight`` x the adversary's privacy term (0 once the online decoder
    does no better than the mean image), the decoder trained one step per step on the detached release.
    """
    p = deterministic(base(model, split, task))
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        acts = torch.cat([p.head(b).float() for b in task.batches[:4]])
    mean = acts.mean((0, 2, 3), keepdim=True)
    logits = torch.full((1, acts.shape[1], 1, 1), 2.0, requires_grad=True)
    adv = _scaled_attacker(p, task.batches[0], cfg.seed)
    _, task_fn = resolve(None, p.task)
    p.tail.requires_grad_(True)
    opt = torch.optim.Adam(
        [{"params": [logits], "lr": cfg.lr}, {"params": list(p.tail.parameters()), "lr": cfg.lr_tail}]
    )
    bar = tqdm(range(cfg.steps), desc="disco gates", disable=not cfg.progress, leave=False)
    for step in bar:
        x = task.batches[step % len(task.batches)]
        with torch.no_grad():
            clean, a = p.teacher(x), p.head(x)
        g = torch.sigmoid(logits)
        release = g * a + (1 - g) * mean
        adv.step(release.detach(), x)
        loss = task_fn(p.tail(release), clean, x) + cfg.disco_weight * adv.privacy_term(release, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(logits.detach()).flatten(), mean.flatten()


def disco(
    model: nn.Module,
    split: str,
    level: float,
    task: PeerTask,
    cfg: PeerConfig,
    gates: tuple[Tensor, Tensor] | None = None,
) -> Protected:
    """Prune the ``level`` share of channels with the lowest DISCO gate; pruned channels send their mean."""
    gate, mean = gates if gates is not None else disco_gates(model, split, task, cfg)
    p = deterministic(base(model, split, task))
    c = gate.numel()
    n = min(c - 1, round(float(level) * c))
    pruned = torch.argsort(gate)[:n]
    with torch.no_grad():
        keep = torch.ones(c, dtype=torch.bool)
        keep[pruned] = False
        p.noise.keep.copy_(keep.view_as(p.noise.keep))
        mu = torch.where(keep, torch.zeros(c), mean)
        p.noise.mu.copy_(mu.view_as(p.noise.mu))
    tune_tail(p, task, cfg)
    p.meta["peer"] = {"pruned": n, "channels": c, "pruned_fraction": n / c}
    return p
