"""What every audit measures, whatever the model: SSIM/PSNR per K, SNR, dCor, the mean-image floor.

Shared by FaceBoxes' audit (:mod:`veil.audit.faceboxes`) and the audit of any ``veil.protect`` image
transform (:mod:`veil.audit.generic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from veil.audit.attack import AttackConfig, Attacker, ImageSet, NoiseSpec, score
from veil.audit.metrics import batched_dcor, psnr, ssim, to_unit
from veil.noise import snr_db

if TYPE_CHECKING:
    from veil.audit.report import TargetResult

SHOW = 8  # images per row in reconstructions.png


def released(clean: Tensor, spec: NoiseSpec | None, seed: int, k: int = 1) -> Tensor:
    return clean if spec is None else spec.draw(clean, torch.Generator().manual_seed(seed), k)


def measure(
    attackers: dict[int, list[Attacker]],
    acts: Tensor,
    images: ImageSet,
    spec: NoiseSpec | None,
    cfg: AttackConfig,
) -> dict[str, Any]:
    """SSIM/PSNR per K (best of the K=1 decoder and the K-adapted one), SNR and dCor for one eval set."""
    out: dict[str, Any] = {"ssim": {}, "psnr": {}, "ssim_k1_decoder": {}}
    for k in cfg.ks:
        if spec is None and k > 1:  # nothing to average: every release is the same tensor
            out["ssim"][str(k)], out["psnr"][str(k)] = out["ssim"]["1"], out["psnr"]["1"]
            continue
        best: tuple[float, float] | None = None
        for attacker in attackers.get(k, []) + attackers[1]:
            s, p = score(attacker, acts, images.targets, k=k, seed=cfg.seed + 101 * k)
            if attacker.k == 1:
                out["ssim_k1_decoder"][str(k)] = float(s.mean())
            if best is None or float(s.mean()) > best[0]:
                best = (float(s.mean()), float(p.mean()))
        assert best is not None
        out["ssim"][str(k)], out["psnr"][str(k)] = best
    out_released = released(acts, spec, cfg.seed + 5)
    out["snr_db"] = None if spec is None else snr_db(acts, out_released)
    out["dcor"] = batched_dcor(to_unit(images.targets), out_released, seed=cfg.seed)
    out["images"] = len(images.paths)
    return out


def floor(aux: ImageSet, sets: dict[str, ImageSet]) -> dict[str, dict[str, float]]:
    """What predicting the mean auxiliary image scores on each evaluation set."""
    mean = to_unit(aux.targets).mean(0, keepdim=True)
    out = {}
    for name, s in sets.items():
        ref = to_unit(s.targets)
        guess = mean.expand_as(ref)
        out[name] = {
            "ssim": float(ssim(guess, ref).mean()),
            "psnr": float(psnr(guess, ref).mean()),
            "images": float(len(s.paths)),
        }
    return out


def set_name(path: Path, taken: set[str]) -> str:
    name = path.name if path.parent.name in ("", ".") else f"{path.parent.name}/{path.name}"
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def summary(res: TargetResult, primary: str | None) -> str:
    if primary is None or primary not in res.sets:
        return res.name
    m = res.sets[primary]
    ssims = " ".join(f"K={k}:{v:.3f}" for k, v in m["ssim"].items())
    return f"{res.name}: SSIM {ssims} on {primary}"
