"""The training objective's two halves: keep the task (distillation) and hide (privacy).

Split out of :mod:`veil.training.loop` so that the loop reads top to bottom and the losses can be tested
alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from veil.noise import NoiseTransform

DISTILL_WEIGHTS = ("score", "uniform")
TASKS = ("distill", "multibox", "mixed")  # label-free, supervised, or both


def distillation_loss(
    loc: Tensor, conf: Tensor, t_prob: Tensor, t_loc: Tensor, weights: str = "score"
) -> Tensor:
    """Match the clean model: score KL on every anchor, again on the faces, and boxes on the faces.

    ``weights`` says how much each face anchor (clean score > 0.05) counts: ``score`` by the clean
    model's confidence, ``uniform`` all alike, so the small, low-scoring faces that noise loses first
    count as much as the large, certain ones.
    """
    log_p = F.log_softmax(conf, dim=-1)
    t = t_prob.clamp(1e-6, 1 - 1e-6)
    # KL(teacher || student) per anchor: zero when the noisy model agrees with the clean one
    ce = t * (t.log() - log_p[..., 1]) + (1 - t) * ((1 - t).log() - log_p[..., 0])
    pos = t_prob > 0.05  # every anchor that could become a detection at the evaluation threshold
    if bool(pos.any()):
        w = t_prob[pos]
        if weights == "uniform":
            w = torch.ones_like(w)
        box = (F.smooth_l1_loss(loc[pos], t_loc[pos], reduction="none").sum(-1) * w).sum() / w.sum()
        return ce.mean() + (ce[pos] * w).sum() / w.sum() + box
    return ce.mean() + 0.0 * loc.sum()  # no faces in this batch: loc still in the graph (DDP needs it)


def privacy_loss(
    noise: NoiseTransform, channel_std: Tensor | None = None, per_request: bool = False
) -> Tensor:
    """-log(mean sigma): more noise is better, with diminishing returns.

    ``per_request`` (conditional transforms, whose sigma differs per request): the mean over requests of
    -log(that request's mean sigma), so the diminishing returns apply to each request and a nearly clean
    request costs more than a very noisy one gains.

    With ``channel_std`` ([C, 1, 1]): -mean log(sigma / std) instead, diminishing returns *per channel*
    relative to its own signal, so no channel can stay nearly clean while others absorb the noise.
    """
    sigma = noise.batch_sigma()
    if channel_std is None:
        if per_request:  # sigma is [N, C, H, W]: one mean per request
            return -torch.log(sigma.flatten(1).mean(1)).mean()
        return -torch.log(sigma.mean())
    return -torch.log(sigma / channel_std + 1e-6).mean()
