"""What a generic (``veil.protect``) transform needs before it can be audited: its model and its images.

``veil audit`` reconstructs *images*, so a generic transform is audited only when its input spec is an
image batch ``(B, C, H, W)`` with C = 1 or 3 and a floating dtype, and its wire (the release) is
``(B, C', h, w)`` with the noise's feature axis on C'. Anything else (token ids, vectors, a rank-3
wire) is refused in one line before any model is built.

Images are prepared the way the input spec says: resized (bilinear, anti-aliased) to (H, W), averaged to
grey when C = 1, multiplied by the recorded ``scale`` (``veil train --model`` records 1/255), then
``(x - mean) / std`` for the recorded mean/std (one value or one per channel; null: skipped). Without a
``scale``, a mean above 1 means 0-255 statistics (as FaceBoxes' are: scale 1), else [0, 1] ones (scale
1/255). Without any recorded normalisation the model gets [0, 1] floats. ``resize`` is ignored (the
input spec's H x W, or ``--size``, decides). ``"channels": "BGR"`` (FaceBoxes' record on the generic path)
means :func:`veil.imageio.preprocess`'s convention: the uint8 image is resized bilinearly without
anti-aliasing (as OpenCV does) and its channels are reversed before the mean is subtracted, so the
model gets exactly what FaceBoxes' own pipeline gives it; ``"RGB"`` (the default) changes nothing.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from veil.artifact import GENERIC, Transform, load_transform
from veil.errors import CheckpointError, InputError, TransformError, VeilError, brief

NORMALISATION_KEYS = ("mean", "std", "scale", "resize", "channels")
CHANNEL_ORDERS = ("RGB", "BGR")


def read_transform(path: str | Path) -> Transform:
    """The verified transform at ``path`` (FaceBoxes or generic); digests checked, no model needed."""
    return load_transform(path)


def is_generic(tr: Transform) -> bool:
    return tr.meta.get("kind") == GENERIC


def image_spec(tr: Transform) -> tuple[int, int, int]:
    """(C, H, W) of an image transform's input, or the one-line refusal naming what it is instead."""
    meta = tr.meta
    ins, wire = meta.get("input_spec") or {}, meta.get("wire_spec") or {}
    shape, dtype = [int(s) for s in ins.get("shape", [])], str(ins.get("dtype", "?"))
    wshape = [int(s) for s in wire.get("shape", [])]
    floating = getattr(torch, dtype, None) in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    image = len(shape) == 3 and shape[0] in (1, 3) and floating
    if not image or len(wshape) != 3 or int(wire.get("feature_axis", -1)) != 0:
        name = tr.path.name if tr.path else "?"
        raise InputError(
            f"veil audit reconstructs images or vectors: transform {name} has input spec {dtype} (B, "
            f"{', '.join(map(str, shape))}) and wire (B, {', '.join(map(str, wshape))}) (it needs (B, 1 or "
            "3, H, W) float inputs and a (B, C, h, w) wire, or (B, D) float inputs and a (B, C) wire)"
        )
    return shape[0], shape[1], shape[2]


def check_normalisation(norm: Any, channels: int) -> tuple[Tensor | None, Tensor | None, float]:
    """(mean or None, std or None, pixel scale) with ``x = (pixels_0_255 * scale - mean) / std``.

    The record is ``veil train --model``'s ``{"scale": 1/255, "resize": [H, W], "mean": [...] | null,
    "std": [...] | null}`` or ``protect(normalisation={"mean": [...], "std": [...]})``; without ``scale``
    a mean above 1 means 0-255 statistics (scale 1), else [0, 1] ones (scale 1/255). Bad records are
    refused in one line.
    """
    if norm is None:
        return None, None, 1 / 255
    if not isinstance(norm, dict) or set(norm) - set(NORMALISATION_KEYS):
        raise InputError(
            f"input spec normalisation {norm!r}: veil audit understands the keys "
            f"{', '.join(NORMALISATION_KEYS)} (mean/std: one value or one per channel); re-save it with "
            "protect(normalisation=...) in that form"
        )
    if norm.get("channels", "RGB") not in CHANNEL_ORDERS:
        raise InputError(
            f"input spec normalisation: channels must be one of {', '.join(CHANNEL_ORDERS)}, got "
            f"{norm['channels']!r}"
        )
    values: dict[str, Tensor | None] = {}
    for name in ("mean", "std"):
        raw = norm.get(name)
        try:
            v = None if raw is None else torch.tensor([float(x) for x in _as_list(raw)])
        except (TypeError, ValueError):
            raise InputError(f"input spec normalisation: {name} must be numbers, got {raw!r}") from None
        if v is not None and (v.numel() not in (1, channels) or not bool(torch.isfinite(v).all())):
            raise InputError(
                f"input spec normalisation: {name} needs 1 or {channels} finite values, got {raw!r}"
            )
        values[name] = None if v is None else v.view(1, -1, 1, 1)
    mean, std = values["mean"], values["std"]
    if std is not None and bool((std <= 0).any()):
        raise InputError(f"input spec normalisation: std must be > 0, got {norm.get('std')!r}")
    if norm.get("scale") is not None:
        scale = norm["scale"]
        if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            raise InputError(f"input spec normalisation: scale must be a number > 0, got {scale!r}")
        return mean, std, float(scale)
    big = mean is not None and float(mean.abs().max()) > 1.0
    return mean, std, 1.0 if big else 1 / 255


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def prepare(images: Sequence[Tensor], spec: dict[str, Any], size: tuple[int, int]) -> Tensor:
    """uint8 RGB images [3, h, w] -> the model's input batch (see the module docstring)."""
    channels = int(spec["shape"][0])
    mean, std, scale = check_normalisation(spec.get("normalisation"), channels)
    bgr = channel_order(spec) == "BGR"
    batch = torch.stack([_resize(img, size, bgr) for img in images]).clamp_(0, 255)
    return normalise(batch, channels, bgr, scale, mean, std).to(getattr(torch, str(spec["dtype"])))


def normalise(
    x: Tensor, channels: int, bgr: bool, scale: float, mean: Tensor | None, std: Tensor | None
) -> Tensor:
    """0-255 RGB images at the input size -> the model's input: grey or BGR, scaled, minus mean, over std."""
    if channels == 1:
        x = x.mean(1, keepdim=True)
    elif bgr:
        x = x.flip(1)
    x = x * scale
    if mean is not None:
        x = x - mean.to(x.device)
    if std is not None:
        x = x / std.to(x.device)
    return x


def channel_order(spec: dict[str, Any]) -> str:
    """The channel order ("RGB" or "BGR") the input spec's normalisation record asks for."""
    norm = spec.get("normalisation")
    return str(norm.get("channels", "RGB")) if isinstance(norm, dict) else "RGB"


def _resize(img: Tensor, size: tuple[int, int], bgr: bool) -> Tensor:
    """Bilinear, anti-aliased resize to float; BGR records resize the uint8 image the way
    :func:`veil.imageio.preprocess` does (no anti-aliasing, CPU's uint8 kernel)."""
    x = img.unsqueeze(0)
    if not bgr:
        return F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)[0]
    if tuple(img.shape[1:]) == tuple(size):
        return img.float()
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)[0].float()
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255)[0]


@torch.no_grad()
def activations(
    head: nn.Module,
    images: Sequence[Tensor],
    spec: dict[str, Any],
    size: tuple[int, int],
    batch: int = 16,
    desc: str = "",
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Clean head activations [N, C, h, w] (on the CPU) of ``images`` prepared per the input spec."""
    head.to(device).eval()
    out = []
    for start in tqdm(range(0, len(images), batch), desc=desc or "head", disable=not progress):
        x = prepare(images[start : start + batch], spec, size).to(device)
        try:
            act = head(x)
        except RuntimeError as exc:  # e.g. a head with a fixed-size layer at another --size
            first = brief(exc, 160)
            raise InputError(f"the head fails on {size[0]}x{size[1]} inputs ({first}): omit --size") from None
        if not isinstance(act, Tensor) or act.dim() != 4:
            raise InputError(f"the head gives {getattr(act, 'shape', type(act).__name__)}, not (B, C, h, w)")
        out.append(act.float().contiguous().cpu())
    return torch.cat(out)


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """``--model NAME|pkg.module:factory`` with optional ``--weights``, in eval mode.

    A factory taking ``weights=`` gets the path; otherwise the file is read as a state dict of tensors
    (``torch.load(weights_only=True)``) and loaded strictly into the factory's model.
    """
    from veil.models.checkpoint import read_state_dict
    from veil.models.public import build_model, resolve_model

    if weights is None:
        return build_model(spec)
    factory = resolve_model(spec)
    try:
        params = inspect.signature(factory).parameters.values()
        takes = any(p.name == "weights" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        takes = False
    if takes:
        return build_model(spec, weights)
    model = build_model(spec)
    state = read_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = brief(exc, 160)
        raise CheckpointError(
            f"{weights}: not a state dict of model {spec!r} ({first}): pass the weights it was trained with"
        ) from None
    return model.eval()


def load_protected(path: Path, model: nn.Module) -> Any:
    """``veil.load(path, model)``; any failure is one line naming the transform."""
    from veil.protection import load

    try:
        return load(path, model)
    except VeilError:
        raise
    except Exception as exc:  # the user's model may fail to trace or run in many ways
        first = brief(f"{type(exc).__name__}: {exc}", 200)
        raise TransformError(f"{path}: cannot rebuild the transform around this model ({first})") from None


def default_output_size(size: tuple[int, int], output_size: int) -> int:
    """Reconstructions no larger than the input: the largest power of two <= min(H, W), at most
    ``output_size`` and at least 16 (SSIM's window needs 11+ pixels)."""
    side = min(size)
    return max(16, min(output_size, 1 << math.floor(math.log2(max(side, 1)))))
