"""Task losses for :meth:`veil.protection.Protected.fit`: how far noisy outputs are from the clean ones.

Label-free: the clean model's own outputs on the same batch are the target, whatever their structure (a
tensor, a tuple, a dict: any pytree of tensors). Every floating-point leaf counts equally; integer leaves
(indices, lengths) are skipped.

- ``"regression"`` (the default): per leaf, the mean squared error divided by the clean leaf's variance over
  the batch, so 0 is a perfect copy and 1 is as bad as predicting the mean — comparable across scales.
- ``"classification"``: per leaf, KL(clean || noisy) of the softmax over the last axis (logits of shape
  (B, classes) or (B, ..., classes)), averaged over everything but that axis.
- a callable ``loss(noisy_outputs, clean_outputs, batch) -> scalar tensor``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import _pytree as pytree

from veil.errors import InputError

TASKS = ("regression", "classification")
LossFn = Callable[[Any, Any, Any], Tensor]


def float_leaves(outputs: Any) -> list[Tensor]:
    return [v for v in pytree.tree_leaves(outputs) if isinstance(v, Tensor) and v.is_floating_point()]


def regression_loss(noisy: Any, clean: Any, batch: Any = None) -> Tensor:
    """Mean over leaves of MSE / var(clean): scale-free."""
    terms = []
    for a, b in zip(float_leaves(noisy), float_leaves(clean), strict=True):
        b = b.detach()
        scale = b.var(unbiased=False).clamp_min(1e-8) if b.numel() > 1 else b.new_tensor(1.0)
        terms.append(F.mse_loss(a, b) / scale)
    return torch.stack(terms).mean()


def classification_loss(noisy: Any, clean: Any, batch: Any = None) -> Tensor:
    """Mean over leaves of KL(softmax(clean) || softmax(noisy)) along the last axis."""
    terms = []
    for a, b in zip(float_leaves(noisy), float_leaves(clean), strict=True):
        log_q = F.log_softmax(a, dim=-1).flatten(0, -2) if a.dim() > 1 else F.log_softmax(a, -1)[None]
        log_p = F.log_softmax(b.detach(), dim=-1).reshape(log_q.shape)
        terms.append(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))
    return torch.stack(terms).mean()


def resolve(loss: str | LossFn | None, default: str) -> tuple[str, LossFn]:
    """(name recorded in the artifact, the function) for ``fit(loss=...)``; None is the protect-time task."""
    name = default if loss is None else loss
    if callable(name):
        return getattr(name, "__name__", "custom"), name
    if name == "regression":
        return name, regression_loss
    if name == "classification":
        return name, classification_loss
    raise InputError(
        f"loss must be one of {', '.join(TASKS)} or a callable loss(noisy, clean, batch), got {name!r}"
    )


def check_outputs(outputs: Any) -> None:
    """One line unless the model's outputs have at least one floating-point tensor to match."""
    if not float_leaves(outputs):
        raise InputError(
            f"the model's outputs ({type(outputs).__name__}) hold no floating-point tensor: "
            "pass fit(loss=callable) to say what the noisy model should keep"
        )
