"""Fine-tuning the head's last block with the transform (``--train-head``): split, training, artifact, use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_TRAIN, run_veil_each
from veil.artifact import load_transform
from veil.errors import InputError, SplitPointError, TransformError
from veil.faceboxes.model import Inception
from veil.noise import NoiseTransform
from veil.split import split_block
from veil.training import TrainConfig, train
from veil.training.adversary import OnlineAttacker


def _recomposed(model: nn.Module, at: str, x: torch.Tensor, blocks: int = 1) -> tuple[nn.Module, nn.Module]:
    """(frozen part, fine-tuned blocks) at ``at``; together they compute exactly the model's head."""
    pre, block = split_block(model, at, blocks)
    head, _ = model.split(at)  # type: ignore[operator]
    with torch.no_grad():
        assert torch.equal(block(pre(x)), head(x))
    return pre, block


def test_split_block_recomposes_the_head(faceboxes: nn.Module) -> None:
    x = torch.randn(1, 3, 128, 128)
    _, block = _recomposed(faceboxes, "inception3", x)
    # the block shares the model's parameters (training it trains the model's head)
    assert block[0] is faceboxes.inception3
    with pytest.raises(SplitPointError, match="valid split points"):
        split_block(faceboxes, "conv4")
    # two blocks: inception2 and inception3 are fine-tuned, the head up to inception1 stays frozen
    _, block2 = _recomposed(faceboxes, "inception3", x, blocks=2)
    assert block2[0] is faceboxes.inception2 and block2[1] is faceboxes.inception3
    # RDCL counts as two halves, so inception3 has four blocks before it and conv1 stays frozen
    pre4, block4 = _recomposed(faceboxes, "inception3", x, blocks=4)
    assert block4[0].conv is faceboxes.conv2 and len(block4) == 4 and pre4[0].conv is faceboxes.conv1
    with pytest.raises(SplitPointError, match="from 1 to 4"):
        split_block(faceboxes, "inception3", blocks=5)


def test_the_reference_split_fine_tunes_rdcls_second_conv(faceboxes: nn.Module) -> None:
    x = torch.randn(2, 3, 256, 256)
    pre, block = _recomposed(faceboxes, "rdcl", x)
    with torch.no_grad():
        assert pre(x).shape == (2, 48, 32, 32)  # conv1 (stride 4) and one pool: 256 / 8
    assert block[0].conv is faceboxes.conv2 and pre[0].conv is faceboxes.conv1
    with pytest.raises(SplitPointError, match="from 1 to 1"):
        split_block(faceboxes, "rdcl", blocks=2)


def test_privacy_term_reaches_the_encoder_and_not_the_decoder() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 4, 4, generator=gen)  # the image, seen 4x4: what the encoder passes on
    targets = (F.interpolate(base, size=16, mode="bilinear").expand(64, 3, 16, 16) * 255).to(torch.uint8)
    acts = torch.cat([base * 4 - 2, torch.randn(64, 1, 4, 4, generator=gen)], dim=1)
    encoder = nn.Conv2d(2, 2, 1)
    attacker = OnlineAttacker(acts, targets, width=16, seed=0, encoder=encoder, steps=3)
    noise = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel", rho_init=-3.0, seed=1)
    for _ in range(10):  # the decoder learns to beat the mean image, so the term is > 0
        attacker.privacy_term(noise)
    before = [p.detach().clone() for p in attacker.decoder.parameters()]
    term, rel = attacker.privacy_term(noise)
    own = [p.grad.clone() for p in attacker.decoder.parameters() if p.grad is not None]
    term.backward()
    assert encoder.weight.grad is not None and float(encoder.weight.grad.abs().sum()) > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(attacker.decoder.parameters(), own, strict=True))
    assert sum(not torch.equal(a, b) for a, b in zip(before, attacker.decoder.parameters(), strict=True)) > 0
    assert 0 < rel < 1 and term.item() > 0


def test_adversary_steps_must_be_positive(weights: Path, shared_dir: Path) -> None:
    with pytest.raises(Exception, match="adversary-steps"):
        TrainConfig(
            weights=str(weights), images=[str(shared_dir / "data/lfw/train")], alpha=0.1, adversary_steps=0
        )


@pytest.fixture(scope="module")
def trained_head(weights: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("head") / "t"
    cfg = TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        alpha=0.5,
        granularity="channel",
        train_head=True,
        lr_head=1e-2,  # large, so that 20 steps visibly move the block
        privacy="adversarial",
        adversary_photos=16,
        adversary_steps=2,
        **(TINY_TRAIN | {"steps": 20}),  # type: ignore[arg-type]
    )
    train(cfg, out, progress=False)
    return out


def test_artifact_stores_only_the_fine_tuned_block(trained_head: Path, weights: Path) -> None:
    tr = load_transform(trained_head, weights)
    meta = json.loads((trained_head / "transform.json").read_text())
    assert meta["has_head"] is True and meta["train"]["train_head"] is True
    assert tr.head_state is not None and tr.tail_state is not None
    assert {k.split(".")[1] for k in tr.head_state} == {"3"}  # stages.3 = inception3, nothing else
    assert len(tr.head_state) == len(Inception().state_dict())


def test_pipeline_runs_the_transforms_head(trained_head: Path, weights: Path, faceboxes: nn.Module) -> None:
    from veil.faceboxes.pipeline import load_pipeline, transform_head

    tr = load_transform(trained_head, weights)
    det = load_pipeline(weights, tr)
    base_head, _ = faceboxes.split("inception3")
    x = det.preprocess([torch.randint(0, 255, (3, 200, 160), dtype=torch.uint8)]).tensor
    with torch.no_grad():
        mine, base = det.head(x), base_head(x)
        # same frozen part, different fine-tuned block: the activations differ, but not wildly
        assert not torch.allclose(mine, base, atol=1e-3)
        assert torch.equal(det.head.stages[:3](x), base_head.stages[:3](x))
        assert torch.allclose(transform_head(weights, tr)(x), mine, atol=1e-5)
        loc, conf = det.tail(det.noise(mine))
    assert loc.shape[-1] == 4 and torch.isfinite(conf).all()


def test_two_fine_tuned_blocks_are_stored_and_run(
    weights: Path, shared_dir: Path, tmp_path: Path, faceboxes: nn.Module
) -> None:
    from veil.faceboxes.pipeline import load_pipeline

    base = dict(weights=str(weights), images=[str(shared_dir / "data/lfw/train")], alpha=0.5)
    with pytest.raises(InputError, match="add --train-head"):
        TrainConfig(**base, head_blocks=2)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="between 1 and 4"):
        TrainConfig(**base, train_head=True, head_blocks=5)  # type: ignore[arg-type]
    cfg = TrainConfig(
        **base,  # type: ignore[arg-type]
        granularity="channel",
        train_head=True,
        head_blocks=2,
        lr_head=1e-2,
        **(TINY_TRAIN | {"steps": 10}),  # type: ignore[arg-type]
    )
    train(cfg, tmp_path / "t2", progress=False)
    tr = load_transform(tmp_path / "t2", weights)
    assert tr.head_state is not None
    assert {k.split(".")[1] for k in tr.head_state} == {"2", "3"}  # inception2 and inception3
    det = load_pipeline(weights, tr)
    base_head, _ = faceboxes.split("inception3")
    x = det.preprocess([torch.randint(0, 255, (3, 160, 160), dtype=torch.uint8)]).tensor
    with torch.no_grad():
        assert torch.equal(det.head.stages[:2](x), base_head.stages[:2](x))  # RDCL + inception1 frozen
        assert not torch.allclose(det.head.stages[:3](x), base_head.stages[:3](x), atol=1e-4)


def test_head_flag_and_tensors_must_agree(trained_head: Path, tmp_path: Path) -> None:
    from veil.models.checkpoint import sha256_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transform.safetensors").write_bytes((trained_head / "transform.safetensors").read_bytes())
    meta = json.loads((trained_head / "transform.json").read_text())
    meta["has_head"] = False
    meta["tensors_sha256"] = sha256_file(bad / "transform.safetensors")
    (bad / "transform.json").write_text(json.dumps(meta))
    with pytest.raises(TransformError, match="disagree on whether a trained head"):
        load_transform(bad)


@pytest.mark.slow
def test_train_head_at_the_reference_split(
    weights: Path, shared_dir: Path, tmp_path: Path, faceboxes: nn.Module
) -> None:
    """At ``--split rdcl`` the head's block is RDCL's second conv; conv1 stays as the base weights."""
    from veil.faceboxes.pipeline import load_pipeline

    args = ["train", "--weights", str(weights), "--images", str(shared_dir / "data/lfw/train")]
    args += ["--alpha", "0.5", "--split", "rdcl", "--train-head", "--granularity", "channel"]
    args += ["--lr-head", "1e-2", "--samples", "8", "--steps", "10", "--batch-size", "4", "--size", "256"]
    # the refusal and the run are independent processes: they overlap
    refused, proc = run_veil_each(
        [*args, "--head-blocks", "2", "--out", str(tmp_path / "bad")],
        [*args, "--quiet", "--out", str(tmp_path / "r")],
    )
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "between 1 and 1" in refused.stderr and not (tmp_path / "bad").exists()
    assert proc.returncode == 0, proc.stderr
    tr = load_transform(tmp_path / "r", weights)
    assert tr.head_state is not None and tr.split == "rdcl"
    assert {".".join(k.split(".")[:3]) for k in tr.head_state} == {"stages.0.conv2"}
    det = load_pipeline(weights, tr)
    base_head, _ = faceboxes.split("rdcl")
    x = det.preprocess([torch.randint(0, 255, (3, 160, 160), dtype=torch.uint8)]).tensor
    with torch.no_grad():
        first = det.head.stages[0].halves()[0]
        assert torch.equal(first(x), base_head.stages[0].halves()[0](x))  # conv1 frozen
        assert not torch.allclose(det.head(x), base_head(x), atol=1e-4)  # conv2 trained
        assert det.head(x).shape[1:] == (128, 8, 8)  # the 256² it was trained at, / 32


def test_audit_attacks_what_the_transforms_head_releases(
    trained_head: Path, weights: Path, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import veil.audit.faceboxes as audit
    from veil.audit import AttackConfig, LinkageConfig, run_audit

    heads: list[nn.Module] = []
    real = audit.transform_head

    def spy(*args: object, **kw: object) -> nn.Module:
        heads.append(real(*args, **kw))  # type: ignore[arg-type]
        return heads[-1]

    monkeypatch.setattr(audit, "transform_head", spy)
    lfw = shared_dir / "data/lfw"
    cfg = AttackConfig(
        input_size=256, output_size=32, width=16, steps=10, adapt_steps=0, ks=(1,), max_images=40
    )
    result = run_audit(
        weights,
        [trained_head],
        lfw / "attack",
        [lfw / "test"],
        tmp_path / "audit",
        cfg=cfg,
        link_cfg=LinkageConfig(steps=5),
        clean_splits=(),
        max_eval=16,
        progress=False,
    )
    assert len(heads) == 1  # one head built for the transform, and used for its activations
    tr = load_transform(trained_head, weights)
    assert tr.head_state is not None
    got = heads[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in tr.head_state.items())
    # the base head's clean baseline, the fine-tuned head without noise, then the transform itself
    assert [(t.kind, t.name) for t in result.targets] == [
        ("clean", "clean inception3 @256"),
        ("clean", "t head, no noise"),
        ("transform", "t"),
    ]
    metrics = json.loads((tmp_path / "audit/metrics.json").read_text())
    snr = [t["sets"]["lfw/test"]["snr_db"] for t in metrics["targets"]]
    assert snr[0] is None and snr[1] is None and snr[2] is not None  # noise only on the transform
    # the report names the release it measured, so a tail-only re-tune can be matched to it
    from veil.artifact import release_digest

    assert metrics["targets"][2]["release_sha256"] == release_digest(tr)
    assert metrics["targets"][0]["release_sha256"] is None
    assert f"- t: `{release_digest(tr)}`" in (tmp_path / "audit/report.md").read_text()
