"""Conditional noise: sigma predicted from the activation, stored, audited and trained like the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_adversarial
from veil.artifact import load_transform, save_transform
from veil.audit import Attacker, Decoder, NoiseSpec, load_attacker, save_attacker
from veil.errors import InputError
from veil.noise import NoiseTransform, privacy_loss
from veil.training import TrainConfig, train


def _varied(noise: NoiseTransform) -> NoiseTransform:
    """A conditional transform whose network is no longer at its zero start."""
    with torch.no_grad():
        for p in noise.net.parameters():  # type: ignore[union-attr]
            p.normal_(0.0, 0.3)
    return noise


def test_untrained_network_is_exactly_per_channel() -> None:
    cond = NoiseTransform((8, 4, 4), smax=2.0, granularity="conditional", rho_init=0.3)
    chan = NoiseTransform((8, 4, 4), smax=2.0, granularity="channel", rho_init=0.3)
    x = torch.randn(3, 8, 4, 4)
    with torch.no_grad():
        assert torch.allclose(cond.sigma(x), chan.sigma().expand_as(x))


def test_sigma_follows_the_activation_and_stays_in_bounds() -> None:
    noise = _varied(NoiseTransform((8, 4, 4), smin=0.1, smax=2.0, granularity="conditional"))
    x1, x2 = torch.randn(1, 8, 4, 4), 3 * torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        s1, s2 = noise.sigma(x1), noise.sigma(x2)
    assert not torch.allclose(s1, s2)
    assert float(s1.min()) >= 0.1 and float(s2.max()) <= 2.0
    # the release's spread at each element is that element's sigma for this activation
    with torch.no_grad():
        many = x1.expand(4096, -1, -1, -1)
        out = noise(many)
    assert torch.allclose(out.std(0), s1[0], rtol=0.08, atol=0.02)


def test_fresh_noise_per_call_and_seeded_repeat() -> None:
    x = torch.randn(2, 8, 4, 4)
    noise = _varied(NoiseTransform((8, 4, 4), granularity="conditional"))
    with torch.no_grad():
        assert not torch.equal(noise(x), noise(x))
        a, b = (
            NoiseTransform((8, 4, 4), granularity="conditional", seed=3),
            NoiseTransform((8, 4, 4), granularity="conditional", seed=3),
        )
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x), b(x))


def test_artifact_round_trip_keeps_the_network(tmp_path: Path) -> None:
    noise = _varied(NoiseTransform((8, 4, 4), smax=2.0, granularity="conditional"))
    noise.typical_sigma.fill_(0.7)
    save_transform(tmp_path / "t", noise, {"alpha": 0.2, "split": "inception3"})
    tr = load_transform(tmp_path / "t")
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.allclose(tr.noise.sigma(x), noise.sigma(x))
    assert tr.noise.granularity == "conditional"
    assert float(tr.noise.mean_sigma()) == pytest.approx(0.7)
    assert tr.meta["mean_sigma"] == pytest.approx(0.7)


def test_per_channel_artifacts_do_not_store_the_conditional_buffer(tmp_path: Path) -> None:
    save_transform(tmp_path / "c", NoiseTransform((8, 1, 1), granularity="channel"), {"alpha": 0.1})
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "c" / "transform.safetensors"))) == {
        "noise.mu",
        "noise.rho",
        "noise.keep",
    }


def test_audit_draws_with_the_senders_sigma_and_stores_it(tmp_path: Path) -> None:
    noise = _varied(NoiseTransform((4, 2, 2), smax=2.0, granularity="conditional"))
    spec = NoiseSpec.of(noise, (4, 8, 8))  # conditional: any spatial size, like per-channel
    x = torch.randn(1, 4, 8, 8).expand(4096, -1, -1, -1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        want = noise.sigma(x[:1])[0]
    assert torch.allclose(spec.draw(x, gen).std(0), want, rtol=0.08, atol=0.02)
    assert torch.allclose(spec.draw(x, gen, k=16).std(0), want / 4, rtol=0.08, atol=0.01)
    attacker = Attacker(Decoder(4, 8, 32, width=8).eval(), spec)
    loaded = load_attacker(save_attacker(attacker, tmp_path / "a.safetensors"))
    assert loaded.noise is not None and loaded.noise.conditional is not None
    with torch.no_grad():
        assert torch.allclose(loaded.noise.conditional.sigma(x[:2]), noise.sigma(x[:2]))


def test_tiny_conditional_run_learns_a_sigma_that_varies_by_image(
    weights: Path, shared_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_adversarial(weights, shared_dir, "conditional", privacy_pool="request")
    metrics = train(cfg, tmp_path / "c", progress=False)
    tr = load_transform(tmp_path / "c")
    assert tr.noise.granularity == "conditional" and tr.noise.suppressed_fraction == 0.0
    assert any(float(p.abs().max()) > 0 for p in tr.noise.net.parameters())  # type: ignore[union-attr]
    assert metrics["mean_sigma"] == pytest.approx(float(tr.noise.mean_sigma()), rel=1e-5)
    acts = torch.randn(4, *tr.noise.shape)
    with torch.no_grad():
        per_image = tr.noise.sigma(acts).mean((1, 2, 3))
    assert float(per_image.std()) > 0  # one sigma per request, not one for all


def test_per_request_privacy_charges_a_nearly_clean_request() -> None:
    """Same batch mean sigma, one request nearly clean: only the per-request pool objects."""
    noise = NoiseTransform((2, 2, 2), smin=0.0, smax=4.0, granularity="conditional")
    even = torch.full((2, 2, 2, 2), 1.0)
    uneven = torch.stack([torch.full((2, 2, 2), 1.99), torch.full((2, 2, 2), 0.01)])
    noise.last_sigma = even
    assert float(privacy_loss(noise, per_request=True)) == pytest.approx(float(privacy_loss(noise)))
    noise.last_sigma = uneven
    batch, request = float(privacy_loss(noise)), float(privacy_loss(noise, per_request=True))
    assert batch == pytest.approx(0.0, abs=1e-6)  # -log(mean 1.0): blind to the clean request
    assert request == pytest.approx(-(torch.tensor([1.99, 0.01]).log().mean().item()), rel=1e-5)
    assert request > batch + 1.5


def test_request_pool_is_refused_where_sigma_is_shared() -> None:
    with pytest.raises(InputError, match="--privacy-pool request needs --granularity conditional"):
        TrainConfig(weights="w", images=["d"], alpha=0.1, granularity="channel", privacy_pool="request")
    with pytest.raises(InputError, match="--privacy-pool request has no effect with --privacy relative"):
        TrainConfig(
            weights="w",
            images=["d"],
            alpha=0.1,
            granularity="conditional",
            privacy="relative",
            privacy_pool="request",
        )
    with pytest.raises(InputError, match="--privacy-pool must be batch or request"):
        TrainConfig(weights="w", images=["d"], alpha=0.1, granularity="conditional", privacy_pool="image")
