"""The white-box attacks of the audit: rMLE, the hybrid and the Fisher-information bound, in one call.

The decoder of :mod:`veil.audit.attack` learns to invert the release from auxiliary images; the
white-box attacker instead *uses the head itself*: it optimises an image until the head explains the
release (rMLE, He, Zhang & Lee, ACSAC 2019; :mod:`veil.audit.inversion`), optionally starting from the
decoder's guess (the hybrid), and the Fisher information of the release about the image bounds what any
unbiased attacker can achieve (dFIL, Maeng et al., NeurIPS 2023; :mod:`veil.audit.fisher`). All of them
need the head as a differentiable function of an image in [0, 1]: :func:`input_map` is the audit's image
preparation (:func:`veil.audit.inputs.prepare`) written in differentiable torch.

:func:`whitebox_measure` scores every attack on the same releases (one seeded draw per K) of the first
``cfg.images`` evaluation images, at the audit's output size, and returns JSON-able numbers plus the
reconstructions for the report's pictures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.audit.attack import Attacker, NoiseSpec, decode
from veil.audit.fisher import fisher_bound
from veil.audit.inputs import channel_order, check_normalisation, normalise
from veil.audit.inversion import InversionConfig, hybrid, invert
from veil.audit.metrics import psnr, ssim, to_unit
from veil.errors import InputError

ATTACKS = ("rmle", "hybrid", "fisher")


def input_map(spec: dict[str, Any], size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """Differentiable images [N, 3, s, s] in [0, 1] (any s) -> the model's input batch at ``size``.

    The same steps as :func:`veil.audit.inputs.prepare` on uint8 images: bilinear resize (anti-aliased;
    a ``"channels": "BGR"`` record resizes without anti-aliasing, as :func:`veil.imageio.preprocess`
    does), grey when the spec has one channel, BGR order when recorded, the pixel scale, then mean/std.
    ``prepare`` resizes uint8 pixels for BGR records (rounding to whole grey levels), so the two agree
    there to within one grey level; otherwise to float precision.
    """
    shape = spec.get("shape") or []
    if len(shape) != 3 or int(shape[0]) not in (1, 3):
        raise InputError(f"input_map needs an image input spec (C = 1 or 3, H, W), got shape {shape}")
    channels = int(shape[0])
    mean, std, scale = check_normalisation(spec.get("normalisation"), channels)
    bgr = channel_order(spec) == "BGR"
    h, w = int(size[0]), int(size[1])

    def to_input(x01: Tensor) -> Tensor:
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise InputError(f"input_map takes images [N, 3, s, s] in [0, 1], got {tuple(x01.shape)}")
        x = x01 * 255.0
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=not bgr)
        return normalise(x, channels, bgr, scale, mean, std)

    return to_input


@dataclass
class WhiteboxConfig(InversionConfig):
    """The white-box part of the audit: the inversion budget, the Fisher projections and which attacks."""

    projections: int = 8  # Hutchinson projections per image for dFIL
    attacks: tuple[str, ...] = ATTACKS

    def check(self) -> None:
        super().check()
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise InputError(
                f"white-box attacks {list(self.attacks)}: choose one or more of {', '.join(ATTACKS)}"
            )
        if not isinstance(self.projections, int) or self.projections < 2:
            raise InputError(f"white-box projections={self.projections}: needs an integer >= 2")


@dataclass
class WhiteboxResult:
    """``metrics``: the JSON-able numbers; ``recons[attack][k]``: uint8 reconstructions [n, 3, o, o]."""

    metrics: dict[str, Any]
    recons: dict[str, dict[int, Tensor]] = field(default_factory=dict)


def _scores(recon: Tensor, ref: Tensor) -> tuple[float, float, float]:
    mse = (recon.float() - ref).pow(2).flatten(1).mean(1)
    return float(ssim(recon, ref).mean()), float(psnr(recon, ref).mean()), float(mse.mean())


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def whitebox_measure(
    head: nn.Module,
    to_input: Callable[[Tensor], Tensor],
    clean_acts: Tensor,
    targets_uint8: Tensor,
    spec: NoiseSpec | None,
    decoders: dict[int, Attacker] | None,
    prior_mean01: Tensor,
    cfg: WhiteboxConfig | None = None,
    ks: Sequence[int] = (1, 16),
    progress: bool = True,
    calibration: tuple[Tensor, Tensor] | None = None,
) -> WhiteboxResult:
    """rMLE, hybrid, decoder and dFIL on the first ``cfg.images`` images, each K on one seeded release.

    ``clean_acts`` [N, C, h, w]: the head's clean activations of the evaluation images (the audit's
    cache); ``targets_uint8`` [N, 3, o, o]: those images at the output size; ``spec``: the transform's
    noise (None: a clean target, K = 1 only, no Fisher bound); ``decoders[k]``: the trained attacker used
    for K = k (falls back to ``decoders[1]``; needed by "hybrid", also scored as "decoder");
    ``prior_mean01`` [3, o, o] or [1, 3, o, o]: the mean auxiliary image, rMLE's start. The release for
    K = k is ``spec.draw(clean, Generator().manual_seed(cfg.seed + 101 * k), k)``.
    ``calibration``: (clean activations, uint8 targets) of held-out auxiliary images (not the decoder's
    training images: its validation persons); the hybrid's anchor weight is then chosen per K from
    ``cfg.anchor_grid`` by SSIM on the first ``cfg.calibration_images`` of them (recorded under
    ``hybrid.anchor``), else ``cfg.anchor_weight`` is used.
    """
    cfg = cfg or WhiteboxConfig()
    cfg.check()
    if clean_acts.shape[0] != targets_uint8.shape[0] or targets_uint8.dim() != 4:
        raise InputError(
            f"whitebox_measure: {clean_acts.shape[0]} activations but targets {tuple(targets_uint8.shape)}"
        )
    ks = sorted({int(k) for k in ks} | {1})
    if ks[0] < 1:
        raise InputError(f"whitebox_measure: K must be >= 1, got {ks}")
    if "hybrid" in cfg.attacks and not decoders:
        raise InputError("the hybrid attack starts from the trained decoder: pass decoders={1: attacker}")
    n = min(cfg.images, clean_acts.shape[0])
    clean, ref = clean_acts[:n].float(), to_unit(targets_uint8[:n])
    out_size = int(ref.shape[-1])
    start = prior_mean01.float().reshape(1, 3, *prior_mean01.shape[-2:])
    start = F.interpolate(start, size=(out_size, out_size), mode="bilinear", antialias=True)
    metrics: dict[str, Any] = {
        "images": n,
        "budget": {key: value for key, value in asdict(cfg).items() if key not in ("device", "images")},
        "floor": dict(zip(("ssim", "psnr", "mse"), _scores(start.expand_as(ref), ref), strict=True)),
    }
    recons: dict[str, dict[int, Tensor]] = {}
    names = [a for a in ("rmle", "hybrid") if a in cfg.attacks] + (["decoder"] if decoders else [])
    for name in names:
        metrics[name] = {"ssim": {}, "psnr": {}, "mse": {}}
        recons[name] = {}
    if "hybrid" in metrics:
        metrics["hybrid"] |= {"anchor": {}, "calibration": {}}
    for k in ks:
        if spec is None and k > 1:  # one clean activation: nothing to average
            for name in names:
                for key in metrics[name]:
                    metrics[name][key][str(k)] = metrics[name][key]["1"]
            continue
        gen = torch.Generator().manual_seed(cfg.seed + 101 * k)
        release = clean if spec is None else spec.draw(clean, gen, k)
        got: dict[str, Tensor] = {}
        attacker = None
        if decoders:
            attacker = decoders.get(k) or decoders[1]
            got["decoder"] = decode(attacker.decoder, release)
        if "rmle" in cfg.attacks:
            got["rmle"] = invert(head, to_input, release, spec, k, start, cfg, progress, f"rMLE K={k}")
        if "hybrid" in cfg.attacks:
            assert attacker is not None
            weight = cfg.anchor_weight
            if calibration is not None:
                weight, table = calibrate_anchor(
                    head, to_input, calibration, spec, attacker, k, cfg, progress
                )
                metrics["hybrid"]["calibration"][str(k)] = table
            metrics["hybrid"]["anchor"][str(k)] = _finite(weight)
            dec = _resize_to(got["decoder"], out_size)
            got["hybrid"] = hybrid(
                head, to_input, release, spec, dec, k, cfg, progress, f"hybrid K={k}", weight
            )
        for name, recon in got.items():
            recon = _resize_to(recon, out_size)
            s, p, m = _scores(recon, ref)
            metrics[name]["ssim"][str(k)], metrics[name]["psnr"][str(k)], metrics[name]["mse"][str(k)] = (
                s,
                p,
                m,
            )
            recons[name][k] = (recon * 255).round().clamp(0, 255).to(torch.uint8)
    if "fisher" in cfg.attacks and spec is not None:
        fb = fisher_bound(
            head, to_input, ref, spec, 1, cfg.projections, cfg.seed, cfg.device, cfg.batch, progress
        )
        dfil = torch.tensor(fb["dfil"], dtype=torch.float64)
        fisher: dict[str, Any] = {"projections": cfg.projections, "values": fb["values"], "dfil": {}}
        fisher |= {"stderr": {}, "mse_bound": {}, "psnr_bound": {}}
        for k in ks:  # Sigma = sigma^2 / K: the information grows K-fold
            dk = dfil * k
            fisher["dfil"][str(k)] = float(dk.mean())
            fisher["stderr"][str(k)] = fb["stderr"] * k
            fisher["mse_bound"][str(k)] = _finite(float((1.0 / dk).mean()))
            fisher["psnr_bound"][str(k)] = _finite(float((10.0 * torch.log10(dk)).mean()))
        fisher["per_image_dfil_k1"] = fb["dfil"]
        metrics["fisher"] = fisher
    elif "fisher" in cfg.attacks:
        metrics["fisher"] = None  # a clean activation has no noise: the information is unbounded
    return WhiteboxResult(metrics, recons)


def calibrate_anchor(
    head: nn.Module,
    to_input: Callable[[Tensor], Tensor],
    calibration: tuple[Tensor, Tensor],
    spec: NoiseSpec | None,
    attacker: Attacker,
    k: int,
    cfg: InversionConfig,
    progress: bool = True,
) -> tuple[float, dict[str, float]]:
    """The hybrid's anchor weight from ``cfg.anchor_grid`` with the best mean SSIM on held-out
    auxiliary images (their own seeded release), and the SSIM of every weight ("inf": the decoder)."""
    acts, targets = calibration
    n = min(cfg.calibration_images, acts.shape[0])
    if n < 1 or targets.shape[0] < n:
        raise InputError(
            f"hybrid calibration needs >= 1 auxiliary image with its target, got {acts.shape[0]}"
        )
    clean, ref = acts[:n].float(), to_unit(targets[:n])
    gen = torch.Generator().manual_seed(cfg.seed + 7 + 101 * k)
    release = clean if spec is None else spec.draw(clean, gen, k)
    dec = _resize_to(decode(attacker.decoder, release), int(ref.shape[-1]))
    table: dict[str, float] = {}
    best, best_w = -math.inf, math.inf
    for w in sorted(cfg.anchor_grid, reverse=True):  # ties keep the stronger anchor
        x = hybrid(head, to_input, release, spec, dec, k, cfg, progress, f"calibrate w={w:g}", w)
        score = float(ssim(_resize_to(x, int(ref.shape[-1])), ref).mean())
        table[f"{w:g}"] = score
        if score > best:
            best, best_w = score, w
    return best_w, table


def _resize_to(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
