"""The training set, cached once: clean head activations and the clean model's outputs per sample.

Each training step then costs only the tail (and, with ``train_head``, the head's last block), which
is what makes the fine-tune pass affordable on a CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.errors import InputError
from veil.faceboxes.multibox import multibox_loss
from veil.imageio import preprocess
from veil.noise import NoiseTransform, snr_db
from veil.training.losses import distillation_loss

if TYPE_CHECKING:
    from veil.training.config import TrainConfig


@dataclass
class Cache:
    """Clean head activations and the clean model's outputs for the same images."""

    activations: Tensor  # [S, C, H, W]
    face_prob: Tensor  # [S, A]
    loc: Tensor  # [S, A, 4]
    loc_target: Tensor | None = None  # [B, A, 4] matched boxes of the boxed samples (multibox, mixed)
    label: Tensor | None = None  # [B, A] 1 = face anchor
    first_boxed: int = 0  # the boxed samples are the last B: sample i has boxes row i - first_boxed


@torch.no_grad()
def build_cache(
    head: nn.Module,
    tail: nn.Module,
    images: Iterable[Tensor],
    size: int,
    progress: bool = True,
    block: nn.Module | None = None,
    total: int | None = None,
) -> Cache:
    """With ``block`` (the head's trainable last block), the cached activations are its inputs.

    ``images`` may be a generator: each image is dropped once its activation is cached.
    """
    acts, probs, locs = [], [], []
    device = next(head.parameters()).device  # the cache lives where training runs
    bar = tqdm(images, desc="caching clean activations", disable=not progress, unit="img", total=total)
    for img in bar:
        x = preprocess([img], size=(size, size), device=device).tensor
        a = head(x)
        loc, conf = tail(a if block is None else block(a))
        acts.append(a.contiguous())
        probs.append(conf.softmax(-1)[..., 1])
        locs.append(loc)
        if len(acts) == 1 and total:
            check_fits(total, acts[0].nbytes + probs[0].nbytes + loc.nbytes, available_memory(device))
    return Cache(torch.cat(acts), torch.cat(probs), torch.cat(locs))


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes a new allocation can get: free GPU memory on a CUDA device, else the kernel's MemAvailable
    (None where it cannot tell)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(samples: int, per_sample: int, available: int | None = None) -> None:
    """Refuse, after one sample, a cache that cannot fit: better a line of advice than the OOM killer.

    Each sample keeps its activation and the clean outputs; at the end ``torch.cat`` copies them into
    one tensor while the per-sample pieces still exist, hence the factor 2.
    """
    free = available_memory() if available is None else available
    need = 2 * samples * per_sample
    if free is not None and need > free:
        gib = 1024**3
        raise InputError(
            f"--samples {samples} needs about {need / gib:.1f} GiB for the activation cache "
            f"({per_sample / 1024**2:.1f} MiB a sample) but {free / gib:.1f} GiB is available: "
            f"use at most --samples {max(1, int(free / (2 * per_sample)))}, or more ranks under torchrun"
        )


def prepare_cache(
    cfg: TrainConfig,
    head: nn.Module,
    tail: nn.Module,
    rank: int,
    world: int,
    progress: bool,
    block: nn.Module | None = None,
) -> Cache:
    """Training samples for this rank, their clean activations and outputs, and (multibox) targets."""
    from veil.faceboxes.data import load_dataset
    from veil.faceboxes.data.images import iter_training_samples
    from veil.faceboxes.multibox import labeled_samples, match_samples

    labeled = [load_dataset(d).part(cfg.labels_part) for d in cfg.labels]
    boxed = cfg.samples if cfg.task == "multibox" else cfg.samples // 2 if cfg.task == "mixed" else 0
    count, cache = cfg.samples - boxed, None
    if count:  # photo mosaics and scene crops, distillation only
        extra = [
            img.path for d in labeled for img in d.images
        ]  # boxes unused: unlabeled target-domain scenes
        images = iter_training_samples(
            cfg.images,
            cfg.scenes,
            count=count,
            size=cfg.input_size,
            scene_fraction=cfg.scene_fraction,
            seed=cfg.seed,
            scene_files=extra,
            grids=cfg.mosaic_grids,
            scene_grids=cfg.scene_grids,
        )
        mine = itertools.islice(images, rank, None, world)  # every world-th sample, as a list slice would
        total = len(range(rank, count, world))
        cache = build_cache(head, tail, mine, cfg.input_size, progress, block, total=total)
        if not boxed:
            return cache
    samples = labeled_samples(labeled, boxed, cfg.input_size, cfg.seed, progress)[rank::world]
    part = build_cache(head, tail, [s.image for s in samples], cfg.input_size, progress, block)
    loc_target, label = match_samples(samples, cfg.input_size)
    part.loc_target, part.label = loc_target.to(part.loc.device), label.to(part.loc.device)
    if cache is None:  # multibox: every sample boxed
        return part
    return Cache(  # mixed: distilled samples first, then the boxed ones (distilled as well)
        torch.cat([cache.activations, part.activations]),
        torch.cat([cache.face_prob, part.face_prob]),
        torch.cat([cache.loc, part.loc]),
        loc_target=part.loc_target,
        label=part.label,
        first_boxed=cache.activations.shape[0],
    )


def task_loss(cache: Cache, idx: Tensor, loc: Tensor, conf: Tensor, cfg: TrainConfig) -> Tensor:
    """The step's task loss: distillation (label-free), MultiBox on boxes, or both (``mixed``).

    Mixed: every sample is distilled from the clean model, and the boxed ones add ``label_weight`` x
    MultiBox, whose hard negatives spare the anchors the clean model calls faces, so that faces the
    annotators left out (a crowd's smallest) are not trained away.
    """
    if cache.label is None or cache.loc_target is None:
        return distillation_loss(loc, conf, cache.face_prob[idx], cache.loc[idx], cfg.distill_weights)
    row = idx - cache.first_boxed
    if cfg.task == "multibox":
        return multibox_loss(loc, conf, cache.loc_target[row], cache.label[row])
    face_prob = cache.face_prob[idx]
    loss = distillation_loss(loc, conf, face_prob, cache.loc[idx], cfg.distill_weights)
    sel = row >= 0
    if bool(sel.any()):
        rows = row[sel]
        boxes = multibox_loss(
            loc[sel], conf[sel], cache.loc_target[rows], cache.label[rows], spare=face_prob[sel] > 0.05
        )
        loss = loss + cfg.label_weight * boxes
    return loss


@torch.no_grad()
def encode(block: nn.Module, acts: Tensor, batch: int = 32) -> Tensor:
    """The trainable block's current outputs for cached activations (statistics, metrics)."""
    return torch.cat([block(acts[i : i + batch]) for i in range(0, acts.shape[0], batch)])


@torch.no_grad()
def cache_metrics(
    noise: NoiseTransform,
    tail: nn.Module,
    cache: Cache,
    block: nn.Module | None = None,
    set_typical: bool = True,
) -> dict[str, Any]:
    """Mean sigma, SNR of the released tensor and agreement with the clean model on the cache.

    ``set_typical`` (conditional noise): store the mean sigma over these activations in the transform;
    off when the release is frozen, which must leave every noise tensor as it was.
    """
    noise.eval()
    acts = cache.activations[:32] if block is None else encode(block, cache.activations[:32])
    released = noise(acts)
    _loc, conf = tail(released)
    prob = conf.softmax(-1)[..., 1]
    t = cache.face_prob[:32]
    pos = t > 0.5
    recall = float(((prob > 0.5) & pos).sum() / pos.sum().clamp_min(1))
    if (
        noise.conditional and set_typical
    ):  # what reports quote: the mean sigma over the cached training activations
        with torch.no_grad():
            noise.typical_sigma.copy_(noise.sigma(acts).mean())
    mean_sigma = float(noise.mean_sigma())
    return {
        "mean_sigma": mean_sigma,
        "snr_db": snr_db(acts, released),
        "suppressed_fraction": noise.suppressed_fraction,
        "clean_positive_recall": recall,
        "score_mae": float((prob - t).abs().mean()),
        "log_mean_sigma": math.log(mean_sigma),
    }
