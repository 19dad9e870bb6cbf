"""The fine-tune pass that learns the noise: loss = (1 - alpha) * task + alpha * (-log mean sigma).

The task loss is label-free by default: the noisy model must reproduce the clean model's own scores
and box regressions on the same image (distillation), so a user needs only unlabeled images from their
domain. With face boxes (``task="multibox"``) it is FaceBoxes' supervised MultiBox loss instead.
The clean head's activations and the clean outputs are computed once and cached; each step
then costs only the tail. Optionally the tail is fine-tuned jointly (``train_tail``), which buys
accuracy at every alpha. With ``privacy="adversarial"`` the privacy term also pits the transform
against a decoder trained online (``veil.training.adversary``). With ``train_head`` the head's last block is
fine-tuned too (the cache then holds that block's inputs), so the released features themselves stop
carrying what rebuilds a face. Works under ``torchrun`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from veil.artifact import save_transform
from veil.device import dist_info
from veil.errors import InputError
from veil.faceboxes.registry import create_model, get_spec, split_model
from veil.models.adapter import attach_adapter
from veil.models.checkpoint import sha256_file
from veil.noise import NoiseTransform, privacy_loss
from veil.split import split_block
from veil.training.adversary import OnlineAttacker, adversary_photos, build_online_attacker
from veil.training.cache import Cache, cache_metrics, encode, prepare_cache, task_loss
from veil.training.checkpoints import carry_release_log, save_checkpoint, start_from, work_folder
from veil.training.config import TrainConfig


# -- the run -----------------------------------------------------------------------------------
def _privacy_setup(
    cfg: TrainConfig,
    head: nn.Module,
    cache: Cache,
    rank: int,
    world: int,
    progress: bool,
    block: nn.Module | None = None,
) -> tuple[Tensor | None, OnlineAttacker | None]:
    """What the privacy term needs beyond sigma: channel stds ("relative") or an online attacker."""
    if cfg.privacy == "relative":
        acts = cache.activations if block is None else encode(block, cache.activations)
        channel_std = acts.std(dim=(0, 2, 3)).clamp_min(1e-3).view(-1, 1, 1)
        if world > 1:
            dist.all_reduce(channel_std)
            channel_std /= world
        return channel_std, None
    if cfg.privacy == "adversarial":
        photos = adversary_photos(cfg.images, cfg.scenes, cfg.adversary_photos, cfg.seed)
        attacker = build_online_attacker(
            head,
            photos,
            cfg.adversary_size or cfg.input_size // 2,
            seed=cfg.seed + rank,
            progress=progress,
            encoder=block,
            steps=cfg.adversary_steps,
        )
        return None, attacker
    return None, None


def _block_state(head: nn.Module, block: nn.Module) -> dict[str, Tensor]:
    """The head's entries that live in the fine-tuned block (the rest equals the base weights)."""
    mine = {id(t) for t in block.state_dict(keep_vars=True).values()}
    return {k: v.detach() for k, v in head.state_dict(keep_vars=True).items() if id(v) in mine}


class _Trainable(nn.Module):
    """(head block ->) noise -> tail as one module so DDP averages every set of gradients."""

    def __init__(self, noise: NoiseTransform, tail: nn.Module, block: nn.Module | None = None) -> None:
        super().__init__()
        self.noise, self.tail = noise, tail
        self.block = block if block is not None else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out: tuple[Tensor, Tensor] = self.tail(self.noise(self.block(x)))
        return out


def train(
    cfg: TrainConfig, out: str | Path, progress: bool = True, stop_after: int | None = None
) -> dict[str, Any]:
    """Train a transform and write it to ``out``; returns its final metrics.

    Progress is checkpointed beside ``out``; a rerun resumes there. ``stop_after`` ends this run early
    at that step (leaving only the checkpoint). A run failing before its first checkpoint leaves nothing.
    """
    rank, world = dist_info()
    if torch.device(cfg.device).type != "cpu" and world > 1:
        raise InputError("--device cuda runs one process: leave out torchrun, or train on CPUs under it")
    with work_folder(Path(out)) as work:
        return _run(cfg, Path(out), work, rank, world, progress, stop_after)


def _run(
    cfg: TrainConfig, out: Path, work: Path, rank: int, world: int, progress: bool, stop_after: int | None
) -> dict[str, Any]:
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    spec = get_spec(cfg.model)
    model = create_model(cfg.model, cfg.weights).to(dev)
    head, tail = split_model(model, cfg.split)
    pre, block = split_block(model, cfg.split, cfg.head_blocks) if cfg.train_head else (head, None)
    cache = prepare_cache(cfg, pre, tail, rank, world, progress and rank == 0, block)
    released_shape = tuple(cache.activations.shape[1:])
    if block is not None:
        block.eval()  # frozen BatchNorm statistics, as for the tail
        with torch.no_grad():
            released_shape = tuple(block(cache.activations[:1]).shape[1:])
    act_std = float((cache.activations if block is None else encode(block, cache.activations)).std())
    if world > 1:  # every rank must build the same noise (same smax), or DDP replicas diverge
        std = torch.tensor([act_std])
        dist.all_reduce(std)
        act_std = float(std) / world
    noise = NoiseTransform(
        released_shape,
        smin=0.0,
        smax=cfg.smax_factor * act_std,
        granularity=cfg.granularity,
        seed=None,
    )
    origin: dict[str, object] | None = None
    if cfg.init:
        noise, origin = start_from(cfg, head, tail, released_shape)
    if cfg.tail_adapter:  # kept if the source already has one of this size (veil.models.adapter)
        attach_adapter(tail, released_shape[0], cfg.tail_adapter)
    noise, tail = noise.to(dev), tail.to(dev)  # a new adapter is built on the CPU
    trained_block = block
    if cfg.freeze_release:  # nothing before the tail learns: cache the released block's outputs once
        if block is not None:
            cache.activations = encode(block, cache.activations)
            block.requires_grad_(False)
        channel_std, attacker, block = None, None, None
    else:
        channel_std, attacker = _privacy_setup(cfg, pre, cache, rank, world, progress and rank == 0, block)
    tail.requires_grad_(cfg.train_tail)
    module = _Trainable(noise, tail, block)
    module.tail.eval()  # frozen BatchNorm statistics: fine-tuning must not drift them
    groups: list[dict[str, Any]] = []
    if not cfg.freeze_release:
        groups.append({"params": list(noise.parameters()), "lr": cfg.lr_noise})
    if cfg.train_tail:
        groups.append({"params": [p for p in tail.parameters() if p.requires_grad], "lr": cfg.lr_tail})
    if block is not None:
        groups.append({"params": list(block.parameters()), "lr": cfg.lr_head})
    opt = torch.optim.Adam(groups)
    ddp: nn.Module = module
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(module)
    ckpt = work / "checkpoint.pt"
    start = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if attacker is not None and "attacker" in state:
            attacker.load_state_dict(state["attacker"])
    log_path = work / ("train_log.csv" if rank == 0 else f"train_log.rank{rank}.csv")
    log_file = log_path.open("a" if start else "w", newline="")
    log = csv.writer(log_file)
    if start == 0:
        log.writerow(["step", "loss", "task", "privacy", "mean_sigma", "attack_vs_floor"])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    n = cache.activations.shape[0]
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=f"training alpha={cfg.alpha}", disable=not progress or rank > 0)
    suppress_at = int(cfg.steps * cfg.suppress_from)
    for step in bar:
        if step == suppress_at and not noise.conditional and not cfg.freeze_release:
            # From here on, suppressed elements are the constant mu during training too, so the tail
            # learns to work with exactly what inference will send (not with noise it will never see).
            noise.suppress_above(cfg.suppress_factor * noise.smax, cfg.suppress_max)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen).to(dev)
        loc, conf = ddp(cache.activations[idx])
        task = task_loss(cache, idx, loc, conf, cfg)
        priv = privacy_loss(noise, channel_std, per_request=cfg.privacy_pool == "request")
        attack_vs_floor = float("nan")
        if attacker is not None and cfg.adversary_reset and step and step % cfg.adversary_reset == 0:
            attacker.reset(cfg.seed + rank + step)
        if attacker is not None:
            term, attack_vs_floor = attacker.privacy_term(noise)
            priv = priv + cfg.adversary_weight * term
        loss = (1 - cfg.alpha) * task + cfg.alpha * priv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            if not math.isfinite(loss.item()):  # never checkpoint or save a diverged run
                ckpt.unlink(missing_ok=True)
                msg = f"training diverged at step {step + 1} (loss {loss.item()}): nothing was written"
                raise InputError(msg + "; lower --lr-tail / --lr-head (or --adversary-weight) and rerun")
            sigma = float(noise.batch_sigma().detach().mean())  # conditional: this batch's
            log.writerow([step + 1, loss.item(), task.item(), priv.item(), sigma, attack_vs_floor])
            log_file.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", task=f"{task.item():.3f}", sigma=f"{sigma:.3f}")
            if rank == 0:
                save_checkpoint(ckpt, step + 1, module, opt, attacker)
        if stop_after is not None and step + 1 >= stop_after:
            log_file.close()
            return {"stopped_at": step + 1}
    log_file.close()
    metrics = cache_metrics(noise, tail, cache, block, set_typical=not cfg.freeze_release)
    metrics["train_seconds"] = time.perf_counter() - t0
    metrics["rank"] = rank
    if rank == 0:
        meta = {
            "model": cfg.model,
            "split": cfg.split,
            "alpha": cfg.alpha,
            "input_size": [cfg.input_size, cfg.input_size],
            "mean_bgr": list(spec.mean_bgr),
            "base_weights_sha256": sha256_file(Path(cfg.weights)),
            "base_weights_name": Path(cfg.weights).name,
            "train": asdict(cfg) | {"world_size": world, "activation_std": act_std},
            "training_data": {
                "photo_dirs": cfg.images,
                "scene_dirs": cfg.scenes,
                "label_dirs": cfg.labels,
                "labels_part": cfg.labels_part,
                "task": cfg.task,
                "samples": cfg.samples,
            },
            "metrics": metrics,
        }
        if origin is not None:
            meta["init_from"] = origin
            if origin.get("diagnostic"):
                meta["diagnostic"] = origin["diagnostic"]
        tail_state = dict(tail.state_dict()) if cfg.train_tail else None
        head_state = _block_state(head, trained_block) if trained_block is not None else None
        save_transform(out, noise, meta, tail_state=tail_state, head_state=head_state)
        os.replace(log_path, out / "train_log.csv")
        if cfg.freeze_release and cfg.init is not None:
            carry_release_log(Path(cfg.init), out)
        ckpt.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    if rank > 0:
        log_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    if rank == 0 and work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return metrics
