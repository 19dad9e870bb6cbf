"""``veil tune-tail``: the tail keeps learning while what the client releases stays bit for bit the same."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, run_script_each, run_veil_each, tiny_adversarial
from veil.artifact import load_transform, release_digest
from veil.cli.tune_cmd import tune_config
from veil.errors import InputError, TransformError
from veil.faceboxes.registry import create_model
from veil.training import TrainConfig, train


@pytest.fixture(scope="module")
def source(weights: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny private transform with a fine-tuned head block, per-channel noise and a trained tail."""
    out = tmp_path_factory.mktemp("tune") / "source"
    cfg = tiny_adversarial(weights, shared_dir, "channel", train_head=True, suppress_from=0.5)
    train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tuned(source: Path, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "tuned"
    cfg = tune_config(source, weights, steps=100, samples=8, batch_size=4, lr_tail=1e-3)
    train(dataclasses.replace(cfg, log_every=1), out, progress=False)
    return out


def test_release_is_unchanged_and_only_the_tail_moved(source: Path, tuned: Path, weights: Path) -> None:
    a, b = load_transform(source, weights), load_transform(tuned, weights)
    assert release_digest(a) == release_digest(b) == b.meta["release_sha256"] == a.meta["release_sha256"]
    assert b.meta["init_from"]["release_sha256"] == release_digest(a)
    # how the release was made survives the tuning run's own record (which says only how the tail was tuned)
    assert b.meta["init_from"]["release_train"] == a.meta["train"]
    assert (tuned / "release_train_log.csv").read_bytes() == (source / "train_log.csv").read_bytes()
    for key, value in a.noise.state_dict().items():
        assert torch.equal(value, b.noise.state_dict()[key]), key
    assert a.head_state is not None and b.head_state is not None
    assert all(torch.equal(v, b.head_state[k]) for k, v in a.head_state.items())
    assert a.tail_state is not None and b.tail_state is not None
    moved = [k for k, v in a.tail_state.items() if not torch.equal(v, b.tail_state[k])]
    assert len(moved) > len(a.tail_state) // 4
    # the release-deciding options come from the source, whatever the tuning run was given
    for key in ("alpha", "split", "granularity", "train_head", "input_size"):
        assert b.meta["train"][key] == a.meta["train"][key]
    assert b.meta["train"]["freeze_release"] is True and b.meta["train"]["steps"] == 100


def _task_loss(cfg: TrainConfig, tr_paths: list[Path], draws: int = 6) -> list[float]:
    """Distillation loss of each transform's tail on ``cfg``'s training samples, same release draws."""
    from veil.faceboxes.registry import create_model, split_model
    from veil.split import split_block
    from veil.training.cache import encode, prepare_cache
    from veil.training.losses import distillation_loss

    model = create_model(cfg.model, cfg.weights).eval()
    head, tail = split_model(model, cfg.split)
    pre, block = split_block(model, cfg.split, cfg.head_blocks)
    cache = prepare_cache(cfg, pre, tail, 0, 1, False, block)  # the clean model is the teacher
    losses = []
    for path in tr_paths:
        tr = load_transform(path, cfg.weights)
        head.load_state_dict(tr.head_state or {}, strict=False)
        tail.load_state_dict(tr.tail_state or {})
        acts = encode(block, cache.activations)
        total = 0.0
        with torch.no_grad():
            for d in range(draws):
                tr.noise._seed = 1000 + d  # the same noise draws for every tail compared
                loc, conf = tail(tr.noise(acts))
                total += float(distillation_loss(loc, conf, cache.face_prob, cache.loc, cfg.distill_weights))
        losses.append(total / draws)
    return losses


def test_the_tail_learns_to_read_the_frozen_release(source: Path, tuned: Path, weights: Path) -> None:
    cfg = tune_config(source, weights, steps=100, samples=8, batch_size=4, lr_tail=1e-3)
    before, after = _task_loss(cfg, [source, tuned])
    assert after < 0.8 * before, (before, after)
    rows = list(csv.DictReader((tuned / "train_log.csv").open()))
    assert len(rows) == 100
    assert len({round(float(r["mean_sigma"]), 6) for r in rows}) == 1  # nothing moved the noise


def test_a_changed_release_has_another_digest(source: Path, weights: Path) -> None:
    tr = load_transform(source, weights)
    before = release_digest(tr)
    with torch.no_grad():
        tr.noise.rho[0] += 1e-3
    assert release_digest(tr) != before


def test_freezing_needs_a_source_and_a_tail(weights: Path, shared_dir: Path, source: Path) -> None:
    photos = [str(shared_dir / "data/lfw/train")]
    with pytest.raises(InputError, match="--init"):
        TrainConfig(weights=str(weights), images=photos, alpha=0.1, freeze_release=True)
    with pytest.raises(InputError, match="--train-tail"):
        TrainConfig(
            weights=str(weights),
            images=photos,
            alpha=0.1,
            init=str(source),
            freeze_release=True,
            train_tail=False,
        )


def test_a_source_of_another_split_is_refused(
    weights: Path, shared_dir: Path, source: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        alpha=0.5,
        granularity="channel",
        split="inception2",
        init=str(source),
        freeze_release=True,
        **TINY_TRAIN,  # type: ignore[arg-type]
    )
    with pytest.raises(TransformError, match=r"split 'inception3'.*--split"):
        train(cfg, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_tunes_and_refuses_bad_targets(source: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    base = ["tune-tail", "--weights", str(weights), "--steps", "3", "--samples", "4", "--quiet"]
    grids = ["--mosaic-grids", "2,4", "--scene-grids", "1,2"]
    grid_cases = [("--mosaic-grids", "8,x", "whole numbers"), ("--mosaic-grids", "", "empty")]
    grid_cases += [("--mosaic-grids", "99", "from 1 to"), ("--scene-grids", "0", "--scene-grids must list")]
    # the run and the refusals are independent processes: they overlap (results come back in this order)
    proc, same, *bad_runs, missing = run_veil_each(
        [*base, "--transform", str(source), "--out", str(out), *grids],
        [*base, "--transform", str(source), "--out", str(source)],
        *(
            [*base, "-t", str(source), "-o", str(tmp_path / "g"), option, value]
            for option, value, _ in grid_cases
        ),
        [*base, "--transform", str(tmp_path / "nope"), "--out", str(tmp_path / "y")],
    )
    assert proc.returncode == 0, proc.stderr
    assert "release unchanged" in proc.stdout
    recorded = load_transform(out, weights).meta["train"]
    assert recorded["mosaic_grids"] == [2, 4] and recorded["scene_grids"] == [1, 2]
    assert recorded["freeze_release"] is True
    assert release_digest(load_transform(out, weights)) == release_digest(load_transform(source, weights))
    assert same.returncode == 2 and "must differ" in same.stderr and same.stderr.strip().count("\n") == 0
    for (_, _, says), bad in zip(grid_cases, bad_runs, strict=True):
        assert bad.returncode == 2 and says in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
        assert not (tmp_path / "g").exists()
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0


def test_a_diagnostic_copy_keeps_its_mark_and_is_never_sent(
    source: Path, weights: Path, tmp_path: Path
) -> None:
    """scripts/scale_noise.py --scale 0: the copy, and tails tuned from it, are refused by the client."""
    from veil.cli.common import remote_detector
    from veil.errors import VeilError

    copy = tmp_path / "noiseless"
    done, refused = run_script_each(
        "scale_noise", [str(source), str(copy), "--scale", "0"], [str(source), str(source), "--scale", "0"]
    )
    assert done.returncode == 0, done.stderr
    a, b = load_transform(source, weights), load_transform(copy, weights)
    assert torch.equal(a.noise.mu, b.noise.mu) and torch.equal(a.noise.keep, b.noise.keep)
    assert float(b.noise.sigma().max()) < 1e-5 * a.noise.smax < float(a.noise.sigma().max())
    assert "sigma x 0.0" in b.meta["diagnostic"] and release_digest(a) != release_digest(b)
    tuned = tmp_path / "tuned"
    train(tune_config(copy, weights, steps=2, samples=4, batch_size=2), tuned, progress=False)
    assert load_transform(tuned, weights).meta["diagnostic"] == b.meta["diagnostic"]
    for path in (copy, tuned):  # refused before any connection is tried
        with pytest.raises(VeilError, match="diagnostic copy"):
            remote_detector("127.0.0.1:9", weights, path)
    assert refused.returncode != 0 and "OUT must differ" in refused.stderr


@pytest.mark.slow
def test_unsuppress_copy_sends_every_channel(source: Path, weights: Path, tmp_path: Path) -> None:
    """scripts/scale_noise.py --unsuppress: the suppressed channels come back; head block and mu stay."""
    from veil.artifact import save_transform

    src = load_transform(source, weights)
    with torch.no_grad():
        src.noise.keep.view(-1)[:3] = False  # three suppressed channels, whatever the tiny run chose
    suppressed = tmp_path / "suppressed"
    save_transform(suppressed, src.noise, dict(src.meta), src.tail_state, src.head_state)
    # every copy below is its own process, independent of the others: they run two at a time
    flags = (([], False), (["--unsuppress"], True))
    reverts = [
        [str(suppressed), str(tmp_path / f"revert{t}"), "--scale", "0", "--drop-mu", "--revert-head", str(t)]
        for t in (1.0, 0.5)
    ]
    *copies, revert1, revert05, no_weights = run_script_each(
        "scale_noise",
        *([str(suppressed), str(tmp_path / f"copy{len(flag)}"), "--scale", "0", *flag] for flag, _ in flags),
        *([*cmd, "--weights", str(weights)] for cmd in reverts),
        [str(suppressed), str(tmp_path / "no-weights"), "--scale", "0", "--drop-mu", "--revert-head", "1"],
    )
    for (flag, kept), done in zip(flags, copies, strict=True):
        out = tmp_path / f"copy{len(flag)}"
        assert done.returncode == 0, done.stderr
        copy = load_transform(out, weights)
        assert bool(copy.noise.keep.all()) is kept
        assert ("nothing suppressed" in copy.meta["diagnostic"]) is kept
        assert torch.equal(copy.noise.mu, src.noise.mu)
        assert all(torch.equal(copy.head_state[k], v) for k, v in src.head_state.items())
    # --drop-mu --revert-head 1: the clean activation (the base block, no mu); 0.5 lies halfway
    base = create_model("faceboxes", weights=weights).split(src.meta["split"])[0].state_dict()
    for t, done in ((1.0, revert1), (0.5, revert05)):
        assert done.returncode == 0, done.stderr
        copy = load_transform(tmp_path / f"revert{t}", weights)
        assert float(copy.noise.mu.abs().max()) == 0.0 < float(src.noise.mu.abs().max())
        moved = [
            k for k, v in src.head_state.items() if v.is_floating_point() and not torch.equal(v, base[k])
        ]
        assert moved, "the tiny run's head block never moved"
        for k in moved:
            assert torch.allclose(copy.head_state[k], (1 - t) * src.head_state[k] + t * base[k], atol=1e-6), k
    assert no_weights.returncode != 0 and "needs --weights" in no_weights.stderr
