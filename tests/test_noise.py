"""NoiseTransform: fresh unpredictable noise, seeded repeatability for tests, suppression, shapes."""

from __future__ import annotations

import pytest
import torch

from veil.errors import InputError, SplitPointError
from veil.noise import NoiseTransform, snr_db
from veil.split import SplitModel, split, split_points


def test_two_calls_differ_and_seeded_calls_repeat() -> None:
    x = torch.randn(2, 8, 4, 4)
    noise = NoiseTransform((8, 4, 4), smax=2.0, rho_init=0.0)
    with torch.no_grad():
        a, b = noise(x), noise(x)
        assert not torch.equal(a, b)
        s1, s2 = NoiseTransform((8, 4, 4), seed=7), NoiseTransform((8, 4, 4), seed=7)
        assert torch.equal(s1(x), s2(x))


def test_default_generator_is_not_fixed() -> None:
    """Two fresh transforms must not produce the same noise (no fixed default seed)."""
    x = torch.zeros(1, 8, 4, 4)
    with torch.no_grad():
        assert not torch.equal(NoiseTransform((8, 4, 4))(x), NoiseTransform((8, 4, 4))(x))


def test_noise_statistics_follow_sigma() -> None:
    noise = NoiseTransform((4, 8, 8), smin=0.0, smax=3.0, rho_init=0.0, seed=1)
    with torch.no_grad():
        noise.mu.fill_(0.5)
        x = torch.zeros(4096, 4, 8, 8)
        out = noise(x)
    assert out.mean().item() == pytest.approx(0.5, abs=0.01)
    assert out.std().item() == pytest.approx(1.5, rel=0.01)  # smin + (smax - smin) * (1 + tanh 0) / 2
    assert float(noise.sigma().detach().mean()) == pytest.approx(1.5)


def test_channel_granularity_is_shift_invariant() -> None:
    noise = NoiseTransform((8, 4, 4), granularity="channel")
    assert noise.mu.shape == (8, 1, 1)
    with torch.no_grad():
        noise.rho[3] = 5.0
        sig = noise.sigma().expand(8, 4, 4)
    assert torch.equal(sig[3], torch.full((4, 4), sig[3, 0, 0].item()))


def test_suppression_replaces_by_mu() -> None:
    noise = NoiseTransform((2, 2, 2), smax=4.0, seed=0)
    with torch.no_grad():
        noise.rho.fill_(-3.0)
        noise.rho[0] = 3.0  # channel 0 very noisy -> suppressed
        noise.mu.fill_(0.25)
        count = noise.suppress_above(3.5)
        out = noise(torch.randn(5, 2, 2, 2))
    assert count == 4 and noise.suppressed_fraction == 0.5
    assert torch.all(out[:, 0] == 0.25)
    assert not torch.all(out[:, 1] == 0.25)


def test_inference_follows_edits_after_the_first_call() -> None:
    """sigma and the mask are cached between requests: any change to rho, keep or the state reaches them."""
    noise = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel")
    x = torch.zeros(512, 2, 4, 4)
    with torch.inference_mode():
        assert float(noise(x).std()) == pytest.approx(float(noise.sigma().mean()), rel=0.05)
    with torch.no_grad():
        noise.rho.copy_(torch.tensor([3.0, -3.0]).view(2, 1, 1))  # channel 0 near smax, channel 1 near 0
        noise.mu.fill_(0.5)
    with torch.inference_mode():
        out = noise(x)
    assert float(out[:, 0].std()) > 3.5 and float(out[:, 1].std()) < 0.1
    noise.suppress_above(3.5)
    with torch.inference_mode():
        assert torch.all(noise(x)[:, 0] == 0.5)
    fresh = NoiseTransform((2, 4, 4), smax=4.0, granularity="channel")
    fresh.load_state_dict(NoiseTransform((2, 4, 4), smax=4.0, granularity="channel").state_dict())
    with torch.inference_mode():
        fresh(x)
    fresh.load_state_dict(noise.state_dict())  # a loaded transform replaces the cached one
    with torch.inference_mode():
        out = fresh(x)
    assert torch.all(out[:, 0] == 0.5) and float(out[:, 1].std()) < 0.1


def test_suppression_does_not_lower_mean_sigma() -> None:
    """Suppressed elements count with their (large) sigma: suppressing more never looks like less noise."""
    noise = NoiseTransform((2, 2, 2), smax=4.0, granularity="channel", seed=0)
    with torch.no_grad():
        noise.rho.copy_(torch.tensor([3.0, -3.0]).view(2, 1, 1))
        before = float(noise.mean_sigma())
        noise.suppress_above(3.5)
    after = float(noise.mean_sigma().detach())
    assert after == pytest.approx(before) and after == pytest.approx(float(noise.sigma().detach().mean()))
    assert after > 1.9  # half the channels near smax=4, half near 0


def test_gradients_reach_mu_and_rho() -> None:
    noise = NoiseTransform((2, 3, 3), seed=0)
    noise(torch.randn(4, 2, 3, 3)).pow(2).sum().backward()
    assert noise.mu.grad is not None and noise.rho.grad is not None
    assert noise.rho.grad.abs().sum() > 0


def test_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="does not fit this transform"):
        NoiseTransform((128, 32, 32))(torch.zeros(1, 128, 16, 16))
    with pytest.raises(InputError, match="smin < smax"):
        NoiseTransform((1,), smin=2.0, smax=1.0)


def test_snr() -> None:
    x = torch.ones(100)
    assert snr_db(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)


def test_split_sequential_and_errors() -> None:
    seq = torch.nn.Sequential()
    seq.add_module("a", torch.nn.Linear(4, 4))
    seq.add_module("b", torch.nn.ReLU())
    seq.add_module("c", torch.nn.Linear(4, 2))
    assert split_points(seq) == ["a", "b"]
    head, tail = split(seq, "b")
    x = torch.randn(3, 4)
    assert torch.equal(tail(head(x)), seq(x))
    with pytest.raises(SplitPointError, match="valid split points are a, b"):
        split(seq, "c")
    with pytest.raises(SplitPointError, match="neither a registry model"):
        split(torch.nn.Linear(2, 2), "x")


def test_split_model_release_is_noisy(faceboxes: torch.nn.Module) -> None:
    head, tail = split(faceboxes, "inception3")
    noise = NoiseTransform((128, 8, 8), smax=1.0, rho_init=0.0)
    model = SplitModel(head, noise, tail)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        clean = head(x)
        released = model.release(x)
        loc, conf = model(x)
    assert released.shape == clean.shape and not torch.allclose(released, clean)
    assert loc.shape[-1] == 4 and conf.shape[-1] == 2


def test_scale_noise_diagnostic_scales_sigma_exactly() -> None:
    """scripts/scale_noise.py: the copy's sigma is scale x the original's (0: practically no noise)."""
    from conftest import load_script

    module = load_script("scale_noise")
    noise = NoiseTransform((4, 3, 3), smin=0.1, smax=2.0, granularity="channel", seed=0)
    with torch.no_grad():
        noise.rho.copy_(torch.linspace(-2, 2, noise.rho.numel()).view_as(noise.rho))
    sigma = noise.sigma()
    for scale in (1.0, 0.5, 0.0):
        rho = module.scaled_rho(noise.rho, sigma, noise.smin, noise.smax, scale)
        scaled = noise.smin + (noise.smax - noise.smin) * (1 + torch.tanh(rho)) / 2
        assert torch.allclose(scaled - noise.smin, scale * (sigma - noise.smin), atol=1e-5), scale
        assert torch.isfinite(rho).all()


def test_suppression_cap_keeps_all_but_the_noisiest() -> None:
    """--suppress-max: past the cap only the noisiest elements go; the server never gets nothing."""
    noise = NoiseTransform((8, 1, 1), smax=4.0, granularity="channel", seed=0)
    with torch.no_grad():
        noise.rho.copy_(torch.linspace(2.0, 3.0, 8).view(8, 1, 1))  # every sigma above 3.5, ordered
        assert noise.suppress_above(3.5) == 8  # uncapped: the whole release would be constant
        assert noise.suppress_above(3.5, max_fraction=0.25) == 2
    assert noise.keep.flatten().tolist() == [True] * 6 + [False] * 2  # the two largest sigmas
    with torch.no_grad():
        assert noise.suppress_above(3.9999, max_fraction=0.5) == 0  # the cap never adds suppression
