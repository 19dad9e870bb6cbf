"""Fresh noise comes from os.urandom, not from a seeded torch generator (whose CPU seed has 32 bits)."""

from __future__ import annotations

import secrets

import pytest
import torch
from scipy import stats

from veil.entropy import secure_normal
from veil.noise import NoiseTransform


def test_torch_cpu_generator_keeps_32_bits_of_its_seed() -> None:
    """Why veil.entropy exists: two seeds 2^32 apart draw the same numbers on the CPU."""
    a = torch.randn(64, generator=torch.Generator().manual_seed(12345))
    b = torch.randn(64, generator=torch.Generator().manual_seed(12345 + 2**32))
    assert torch.equal(a, b)


def test_secure_normal_is_standard_normal_and_fresh() -> None:
    x = secure_normal((200_001,), torch.float32, "cpu")
    assert x.shape == (200_001,) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    assert stats.kstest(x.double().numpy(), "norm").pvalue > 1e-4
    assert not torch.equal(x[:1000], secure_normal((1000,), torch.float32, "cpu"))
    assert secure_normal((0, 3), torch.float32, "cpu").shape == (0, 3)
    assert secure_normal((2, 3, 5), torch.float64, "cpu").dtype == torch.float64


def _noise() -> NoiseTransform:
    noise = NoiseTransform((4, 8, 8), smin=0.5, smax=2.0)
    noise.eval()
    return noise


def test_releases_do_not_depend_on_a_generator_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the generator's seed pinned, releases still differ: they come from os.urandom."""
    monkeypatch.setattr(secrets, "randbits", lambda bits: 7)
    noise, x = _noise(), torch.zeros(2, 4, 8, 8)
    with torch.no_grad():
        a, b = noise(x), noise(x)
    assert not torch.equal(a, b)
    assert abs(float((a - noise.mu).div(noise.sigma()).detach().std()) - 1.0) < 0.15


def test_training_steps_use_the_fast_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step's noise (never released) comes from the seeded generator: pinned seed, same draw."""
    monkeypatch.setattr(secrets, "randbits", lambda bits: 7)
    noise, x = _noise().train(), torch.zeros(2, 4, 8, 8)
    assert torch.equal(noise(x), noise(x))


def test_test_seed_still_reproduces() -> None:
    a, b = NoiseTransform((4, 8, 8), seed=3).eval(), NoiseTransform((4, 8, 8), seed=3).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
