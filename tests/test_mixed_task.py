"""``--task mixed``: distillation on every sample plus MultiBox on the boxed half."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from conftest import TINY_TRAIN
from veil.faceboxes.multibox import multibox_loss
from veil.faceboxes.registry import create_model, split_model
from veil.training import TrainConfig, train
from veil.training.cache import prepare_cache


def test_spared_anchors_are_never_negatives() -> None:
    anchors = 40
    label = torch.zeros(1, anchors, dtype=torch.uint8)
    label[0, 0] = 1
    loc_t = torch.zeros(1, anchors, 4)
    loc = torch.zeros(1, anchors, 4)
    conf = torch.zeros(1, anchors, 2)
    conf[0, 5] = torch.tensor([-3.0, 3.0])  # the model is sure anchor 5 is a face; the boxes say nothing
    conf.requires_grad_(True)
    spare = torch.zeros(1, anchors, dtype=torch.bool)
    spare[0, 5] = True
    plain = multibox_loss(loc, conf, loc_t, label)
    spared = multibox_loss(loc, conf, loc_t, label, spare)
    # anchor 5 was the hardest negative; now it is not one
    assert float(spared.detach()) < float(plain.detach()) - 1.0
    (grad,) = torch.autograd.grad(spared, conf)
    assert float(grad[0, 5].abs().sum()) == 0.0
    assert float(grad[0, 0].abs().sum()) > 0.0  # the labelled face still learns


def _mixed(weights: Path, shared_dir: Path, mask_scenes: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        labels=[str(mask_scenes)],
        labels_part="train",
        task="mixed",
        alpha=0.1,
        granularity="channel",
        **(TINY_TRAIN | {"log_every": 1} | overrides),  # type: ignore[arg-type]
    )


def test_mixed_cache_boxes_half_the_samples(weights: Path, shared_dir: Path, mask_scenes: Path) -> None:
    cfg = _mixed(weights, shared_dir, mask_scenes)
    head, tail = split_model(create_model("faceboxes", weights).eval(), cfg.split)
    cache = prepare_cache(cfg, head, tail, rank=0, world=1, progress=False)
    assert cache.label is not None and cache.loc_target is not None
    assert cache.activations.shape[0] == cfg.samples
    boxed = cfg.samples // 2
    assert cache.first_boxed == cfg.samples - boxed  # photos and unboxed scenes first, no boxes rows
    assert cache.label.shape[0] == cache.loc_target.shape[0] == boxed
    assert int(cache.label.sum()) > 0  # the boxed street crops carry face anchors
    # every sample, boxed or not, keeps the clean model's outputs for distillation
    assert float(cache.face_prob[cache.first_boxed :].max()) > 0.5


def test_tiny_mixed_run_learns_and_records_its_task(
    weights: Path, shared_dir: Path, mask_scenes: Path, tmp_path: Path
) -> None:
    cfg = _mixed(weights, shared_dir, mask_scenes, label_weight=0.5, train_tail=True)
    train(cfg, tmp_path / "t", progress=False)
    meta = json.loads((tmp_path / "t" / "transform.json").read_text())
    assert meta["train"]["task"] == "mixed" and meta["train"]["label_weight"] == 0.5
    with (tmp_path / "t" / "train_log.csv").open() as f:
        task = [float(r["task"]) for r in csv.DictReader(f)]
    assert all(t == t and t < float("inf") for t in task)
    assert sum(task[-10:]) < sum(task[:10])
