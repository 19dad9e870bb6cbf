"""The task half of ``veil train``'s objective: keep what FaceBoxes detects (distillation).

The privacy half, shared with the generic core, is :func:`veil.noise.privacy_loss`.

Split out of :mod:`veil.training.loop` so that the loop reads top to bottom and the losses can be tested
alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
