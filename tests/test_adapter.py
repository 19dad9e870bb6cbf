"""The server-side adapter (``--adapter N``): the identity at first, stored with the tail, run alike."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from veil.errors import InputError, TransformError
from veil.models.adapter import ReleaseAdapter, adapter_shape, attach_adapter, fit_tail


def test_a_fresh_adapter_is_the_identity(faceboxes: nn.Module) -> None:
    _, tail = faceboxes.split("inception3")
    adapted = attach_adapter(copy.deepcopy(tail), 128, blocks=2, hidden=16)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        for a, b in zip(tail.eval()(x), adapted.eval()(x), strict=True):
            assert torch.equal(a, b)
    # ... but it is there, trainable, and changes the output once its weights move
    params = list(adapted.adapter.parameters())
    assert sum(p.numel() for p in params) > 0
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(tail(x)[1], adapted(x)[1])


def test_a_trained_adapter_grows_without_changing_what_it_computes(faceboxes: nn.Module) -> None:
    _, tail = faceboxes.split("inception3")
    tail = attach_adapter(copy.deepcopy(tail), 128, blocks=2, hidden=16).eval()
    with torch.no_grad():
        for p in tail.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))  # as if trained
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        before = tail(x)
        attach_adapter(tail, 128, blocks=3, hidden=16)
        after = tail(x)
    assert tail.adapter.shape == (128, 3, 16)
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(TransformError, match=r"3 trained blocks.*--adapter 3 or more"):
        attach_adapter(tail, 128, blocks=2, hidden=16)


def test_shape_is_read_back_from_a_state_dict(faceboxes: nn.Module) -> None:
    tail = copy.deepcopy(faceboxes.split("rdcl")[1])  # the session model stays as loaded
    attach_adapter(tail, 128, blocks=3, hidden=24)
    state = tail.state_dict()
    assert adapter_shape(state) == (128, 3, 24)
    assert adapter_shape(faceboxes.split("rdcl")[1].state_dict()) is None  # no adapter, no entries
    fresh = fit_tail(copy.deepcopy(faceboxes.split("rdcl")[1]), state)
    fresh.load_state_dict(state)  # strict: every entry found its place
    assert isinstance(fresh.adapter, ReleaseAdapter)
    with pytest.raises(TransformError, match="malformed"):
        adapter_shape({"adapter.blocks.x.weight": torch.zeros(1)})
    with pytest.raises(TransformError, match="needs >= 1 block"):
        ReleaseAdapter(128, blocks=0)


def test_adapter_options_are_validated(weights: Path, shared_dir: Path) -> None:
    from veil.training import TrainConfig

    photos = [str(shared_dir / "data/lfw/train")]
    with pytest.raises(InputError, match="--adapter must be >= 0"):
        TrainConfig(weights=str(weights), images=photos, alpha=0.1, tail_adapter=-1)
    with pytest.raises(InputError, match="--train-tail"):
        TrainConfig(weights=str(weights), images=photos, alpha=0.1, tail_adapter=2, train_tail=False)


def test_tuned_adapter_is_stored_and_served_alike(
    weights: Path, shared_dir: Path, tmp_path: Path, faceboxes: nn.Module
) -> None:
    from conftest import TINY_TRAIN
    from veil.artifact import load_transform, release_digest
    from veil.cli.tune_cmd import tune_config
    from veil.faceboxes.pipeline import load_pipeline, transform_tail
    from veil.serve.export import build_tails, torchscript_bytes
    from veil.training import TrainConfig, train

    source = tmp_path / "src"
    cfg = TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        alpha=0.3,
        granularity="channel",
        **(TINY_TRAIN | {"steps": 10}),  # type: ignore[arg-type]
    )
    train(cfg, source, progress=False)
    tuned = tmp_path / "tuned"
    train(
        tune_config(source, weights, steps=10, samples=4, tail_adapter=2, lr_tail=1e-2), tuned, progress=False
    )
    tr = load_transform(tuned, weights)
    assert tr.tail_state is not None and adapter_shape(tr.tail_state) == (128, 2, 64)
    assert release_digest(tr) == release_digest(load_transform(source, weights))
    x = torch.randn(2, 128, 8, 8)
    local = load_pipeline(weights, tr).tail
    served = [
        transform_tail(weights, tr),
        build_tails(weights, tail_state_dict=tr.tail_state, split=tr.split)[1],
    ]
    with torch.no_grad():
        want = local(x)
        for tail in served:
            got = tail(x)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(want, got, strict=True))
        # the trained adapter does something (it left the identity)
        base = copy.deepcopy(faceboxes.split("inception3")[1])
        base.load_state_dict({k: v for k, v in tr.tail_state.items() if not k.startswith("adapter.")})
        assert not torch.allclose(base(x)[1], want[1], atol=1e-4)
    _, diff = torchscript_bytes(local)  # what Triton runs, checked against PyTorch inside
    assert diff < 1e-4
