"""The client side, assembled: preprocess -> head -> noise (-> tail locally, or a server).

``load_pipeline`` turns base weights plus an optional transform directory into a ready
:class:`~veil.faceboxes.detect.Detector`, checking that the two belong together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from veil.artifact import Transform, load_transform
from veil.errors import TransformError
from veil.faceboxes.detect import Detector, PostProcess
from veil.faceboxes.registry import create_model, get_spec, split_model
from veil.models.adapter import fit_tail


def load_pipeline(
    weights: str | Path,
    transform: str | Path | Transform | None = None,
    *,
    model: str = "faceboxes",
    split: str | None = None,
    size: tuple[int, int] | Literal["auto"] | None = "auto",
    resize: float = 1.0,
    post: PostProcess | None = None,
    device: str = "cpu",
    verify: bool = False,
) -> Detector:
    """A detector for ``weights``; with ``transform``, its noise and (if trained) its tail are used.

    ``size="auto"`` picks the transform's training input size, else the model's reference size.
    """
    spec = get_spec(model)
    net = create_model(model, weights, verify=verify)
    tr = load_transform(transform, weights) if isinstance(transform, str | Path) else transform
    if tr is not None:
        if tr.meta.get("model", model) != spec.name:
            raise TransformError(f"transform is for model {tr.meta.get('model')!r}, not {spec.name!r}")
        if split is not None and split != tr.split:
            raise TransformError(
                f"transform was trained at split {tr.split!r}; drop --split or use {tr.split!r}"
            )
        split = tr.split
        trained = tuple(tr.meta.get("input_size", spec.input_size))
        size = trained if size == "auto" else size
        if tr.noise.granularity == "element" and size != trained:
            raise TransformError(
                f"this per-element transform was trained at input size {trained}: use --size {trained[0]}"
            )
    if size == "auto":
        size = spec.input_size
    head, tail = split_model(net, split or spec.default_split)
    noise = None
    if tr is not None:
        _load_part(tail, tr.tail_state, "tail")  # may attach a server-side adapter: move to device after
        _load_part(head, tr.head_state, "head")
        noise = tr.noise.to(device)
    head, tail = (m.to(device).to(memory_format=torch.channels_last) for m in (head, tail))
    return Detector(
        head, tail, noise=noise, size=size, resize=resize, post=post, mean_bgr=spec.mean_bgr, device=device
    )


def transform_tail(
    weights: str | Path, transform: str | Path | Transform, model: str = "faceboxes"
) -> nn.Module:
    """The server half for ``transform``: the tail at its split, with its trained weights if any."""
    tr = load_transform(transform, weights) if isinstance(transform, str | Path) else transform
    _, tail = split_model(create_model(model, weights), tr.split)
    _load_part(tail, tr.tail_state, "tail")
    return tail.eval()


def transform_head(weights: str | Path, transform: Transform, model: str = "faceboxes") -> nn.Module:
    """The client half that goes with ``transform`` (the head up to its split, with its trained
    weights if training fine-tuned it), channels-last."""
    head, _ = split_model(create_model(model, weights), transform.split)
    _load_part(head, transform.head_state, "head")
    return head.eval().to(memory_format=torch.channels_last)


def _load_part(module: nn.Module, state: dict[str, torch.Tensor] | None, what: str) -> None:
    """Load a transform's trained tail (all of it) or head (the fine-tuned block's entries only).

    A one-line error if they do not fit.
    """
    if state is None:
        return
    if what == "tail":
        fit_tail(module, state)  # a server-side adapter, if the transform trained one
    try:
        _, unexpected = module.load_state_dict(state, strict=what == "tail")
    except RuntimeError as exc:
        raise TransformError(f"transform's {what} weights do not fit: {str(exc).splitlines()[0]}") from None
    if unexpected:
        raise TransformError(f"transform's {what} weights do not fit: unexpected {', '.join(unexpected[:3])}")
