"""The supervised MultiBox option: matching, the loss, labeled crops, the hold-out split, a tiny run."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_TRAIN
from veil.cli.main import app
from veil.errors import VeilError
from veil.faceboxes.data import load_dataset
from veil.faceboxes.detect import decode, priors
from veil.faceboxes.multibox import labeled_samples, match, match_samples, multibox_loss, random_crop
from veil.faceboxes.registry import create_model
from veil.imageio import preprocess
from veil.training import TrainConfig, train


def test_match_targets_decode_back_to_the_boxes() -> None:
    anchors = priors(512, 512)
    boxes = torch.tensor([[0.10, 0.10, 0.30, 0.35], [0.50, 0.50, 0.53, 0.54]])
    loc, labels = match(boxes, anchors)
    decoded = decode(loc, anchors)[labels > 0]
    err = (decoded[:, None] - boxes[None]).abs().sum(-1).min(1).values
    assert int(labels.sum()) >= 2  # the tiny face still claims its best anchor
    assert float(err.max()) < 1e-5
    empty_loc, empty_labels = match(torch.zeros(0, 4), anchors)
    assert int(empty_labels.sum()) == 0 and empty_loc.shape == (anchors.shape[0], 4)


def test_random_crop_keeps_boxes_on_their_pixels() -> None:
    img = torch.zeros(3, 400, 600, dtype=torch.uint8)
    img[:, 100:200, 250:350] = 255  # one white "face"
    box = np.array([[250.0, 100.0, 350.0, 200.0]])
    rng = random.Random(0)
    seen = 0
    for _ in range(30):
        s = random_crop(img, box, 128, rng)
        assert s.image.shape == (3, 128, 128) and s.image.dtype == torch.uint8
        for x1, y1, x2, y2 in (s.boxes * 128).round().int().tolist():
            seen += 1
            inside = s.image[0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].float().mean()
            assert inside > 200, "a crop's box must sit on the face it names (flip included)"
    assert seen > 5


def test_clean_model_scores_far_better_on_true_boxes(weights: Path, mask_scenes: Path) -> None:
    data = load_dataset(mask_scenes).part("train")
    samples = labeled_samples([data], 6, 512, seed=1, progress=False)
    assert sum(len(s.boxes) for s in samples) > 0
    loc_t, label = match_samples(samples, 512)
    model = create_model("faceboxes", weights).eval()
    with torch.no_grad():
        loc, conf = model(preprocess([s.image for s in samples], size=(512, 512)).tensor)
    true = multibox_loss(loc, conf, loc_t, label)
    wrong = multibox_loss(loc, conf, loc_t.roll(1, 0), label.roll(1, 0))
    assert float(true) < 0.7 * float(wrong)


def test_parts_are_disjoint_stable_halves(mask_scenes: Path) -> None:
    data = load_dataset(mask_scenes)
    tr, te = data.part("train"), data.part("test")
    names_tr, names_te = {i.name for i in tr}, {i.name for i in te}
    assert not names_tr & names_te
    assert names_tr | names_te == {i.name for i in data}
    assert 0.35 < len(tr) / len(data) < 0.65
    assert [i.name for i in load_dataset(mask_scenes).part("test")] == [i.name for i in te]
    assert data.part("all") is data


def test_tiny_multibox_run_lowers_the_task_loss(weights: Path, mask_scenes: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        weights=str(weights),
        images=[],
        labels=[str(mask_scenes)],
        labels_part="train",
        task="multibox",
        alpha=0.0,
        **(TINY_TRAIN | {"log_every": 1}),  # type: ignore[arg-type]
    )
    train(cfg, tmp_path / "t", progress=False)
    meta = json.loads((tmp_path / "t" / "transform.json").read_text())
    assert meta["training_data"]["task"] == "multibox"
    assert meta["training_data"]["labels_part"] == "train"
    with (tmp_path / "t" / "train_log.csv").open() as f:
        task = [float(r["task"]) for r in csv.DictReader(f)]
    # One batch's loss is noisy (random batches, fresh noise): compare the first steps with the last ten.
    start, end = float(np.mean(task[:3])), float(np.mean(task[-10:]))
    assert end < 0.8 * start, (start, end)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "multibox", "--images", "x"], "--labels"),
        (["--task", "regress", "--labels", "x"], "--task must be"),
        (["--task", "mixed", "--images", "x"], "--task mixed adds MultiBox"),
        (["--label-weight", "2", "--images", "x"], "--label-weight"),
        (["--suppress-max", "1.5", "--images", "x"], "--suppress-max"),
        (["--labels-part", "half", "--labels", "x"], "--labels-part"),
        ([], "no training data"),
        (["--privacy", "most", "--images", "x"], "--privacy"),
        (["--smax-factor", "0", "--images", "x"], "--smax-factor"),
    ],
)
def test_train_cli_rejects_bad_task_options(
    weights: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    res = CliRunner().invoke(
        app, ["train", "--weights", str(weights), "--alpha", "0.2", "--out", str(tmp_path / "o"), *args]
    )
    if isinstance(res.exception, SystemExit):  # refused by the option's own range check (usage error)
        assert res.exit_code == 2 and message in res.output, res.output
    else:
        assert isinstance(res.exception, VeilError)  # main() prints it as one line, exit code 2
        assert message in str(res.exception)
