"""The online attacker used by ``--privacy adversarial`` (synthetic data; seconds on CPU)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_adversarial
from veil.errors import InputError
from veil.noise import NoiseTransform
from veil.training import TrainConfig, train
from veil.training.adversary import OnlineAttacker


def _leaky_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 is the image (4x4 average), channel 1 is the same for every image: only channel 0 leaks."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(n, 1, 4, 4, generator=gen)
    targets = (F.interpolate(base, size=16, mode="bilinear").expand(n, 3, 16, 16) * 255).to(torch.uint8)
    acts = torch.cat([base * 4 - 2, torch.randn(1, 1, 4, 4, generator=gen).expand(n, 1, 4, 4)], dim=1)
    return acts, targets


def test_privacy_term_moves_only_the_transform_and_the_decoder_learns() -> None:
    acts, targets = _leaky_data()
    attacker = OnlineAttacker(acts, targets, width=16, seed=0)
    noise = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel", seed=1)
    first = None
    for _ in range(60):
        before = [p.detach().clone() for p in attacker.decoder.parameters()]
        term, rel = attacker.privacy_term(noise)
        first = rel if first is None else first
        own_grads = [p.grad.clone() for p in attacker.decoder.parameters() if p.grad is not None]
        noise.zero_grad()
        term.backward()
    assert term.item() >= 0.0
    # the term reached rho; the decoder was stepped by its own loss, and the term left its gradients alone
    assert noise.rho.grad is not None and float(noise.rho.grad.abs().sum()) > 0
    grads = [p.grad for p in attacker.decoder.parameters() if p.grad is not None]
    assert len(grads) == len(own_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, own_grads, strict=True))
    after = list(attacker.decoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert rel < 0.8 < first  # with little noise the decoder soon beats the mean image clearly


def test_adversary_noises_the_channel_that_leaks() -> None:
    acts, targets = _leaky_data()
    attacker = OnlineAttacker(acts, targets, width=16, seed=0)
    noise = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel", rho_init=-2.0, seed=1)
    opt = torch.optim.SGD([noise.rho], lr=2.0)
    rels = []
    for _ in range(100):
        term, rel = attacker.privacy_term(noise)
        rels.append(rel)
        opt.zero_grad()
        term.backward()
        opt.step()
    sigma = noise.sigma().detach().flatten()
    assert float(sigma[0]) > 10.0 * float(sigma[1])  # noise went where the image is, not where it is not
    assert min(rels) < 0.5 and sum(rels[-10:]) / 10 > 0.7  # the attacker was winning, then pushed back


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "granularity channel"),  # adversarial privacy needs per-channel noise
        ({"granularity": "channel", "adversary_size": 2048}, "--adversary-size must be between 32 and"),
        ({"granularity": "channel", "adversary_reset": -1}, "--adversary-reset must be >= 0"),
        ({"granularity": "channel", "privacy": "mean", "adversary_reset": 9}, "needs --privacy adversarial"),
    ],
)
def test_adversarial_options_are_checked(
    weights: Path, shared_dir: Path, options: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        TrainConfig(
            weights=str(weights),
            images=[str(shared_dir / "data/lfw/train")],
            alpha=0.1,
            **{"privacy": "adversarial", **options},
        )


def test_reset_starts_a_fresh_decoder_that_must_learn_again() -> None:
    acts, targets = _leaky_data()
    attacker = OnlineAttacker(acts, targets, width=16, seed=0)
    noise = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel", rho_init=-4.0, seed=1)
    fresh = [p.detach().clone() for p in attacker.decoder.parameters()]
    rels = [attacker.privacy_term(noise)[1] for _ in range(60)]
    trained = attacker.decoder
    attacker.reset(0)
    assert attacker.decoder is not trained
    # the same seed gives the same initial decoder; its optimiser is new (no momentum carried over)
    assert all(torch.equal(a, b) for a, b in zip(fresh, attacker.decoder.parameters(), strict=True))
    assert not attacker.opt.state
    again = attacker.privacy_term(noise)[1]
    assert again > 0.8 > rels[-1]  # back near the floor: what it had learned is gone


def test_tiny_adversarial_run_logs_the_attack_and_resumes(
    weights: Path, shared_dir: Path, tmp_path: Path
) -> None:
    # adversary_size: the full input size (default: half of it)
    cfg = tiny_adversarial(weights, shared_dir, "channel", adversary_size=256, adversary_reset=10)
    out = tmp_path / "adv"
    assert train(cfg, out, progress=False, stop_after=10) == {"stopped_at": 10}
    state = torch.load(tmp_path / ".adv.work/checkpoint.pt", weights_only=True)
    assert "attacker" in state  # the decoder resumes with the transform, not from scratch
    assert state["attacker"]["photos"] == 16  # --adversary-photos, not --samples (8)
    assert state["attacker"]["activation_size"] == 256 // 32  # attacked at --adversary-size
    with pytest.raises(InputError, match="another input size"):  # resuming with another size is refused
        train(replace(cfg, adversary_size=128), out, progress=False)
    metrics = train(cfg, out, progress=False)
    assert metrics["mean_sigma"] > 0
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(0.0 < float(r["attack_vs_floor"]) < 5.0 for r in rows)
