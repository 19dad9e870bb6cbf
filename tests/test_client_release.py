"""Issue 32 (8): the client sends only what its own head + a real, non-degenerate noise made.

Every refusal here happens in ``release()``, before any connection: no server is needed (the URL is a
closed port)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from veil.artifact import load_transform, state_fingerprint
from veil.client import VeilClient
from veil.errors import ServingError, TransformError
from veil.faceboxes.pipeline import transform_head
from veil.faceboxes.shipped import SHIPPED_DIR
from veil.noise import NoiseTransform

URL = "127.0.0.1:9"
DEFAULT = SHIPPED_DIR / "faceboxes-inception3-alpha0.12"
RDCL = SHIPPED_DIR / "faceboxes-rdcl-alpha0.8"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randint(0, 255, (3, 200, 240), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_infer_sends_a_callers_tensor_only_when_allowed() -> None:
    noise = NoiseTransform((128, 32, 32), smin=0.5, smax=1.0, granularity="channel")
    with pytest.raises(ServingError, match="use detect"):
        VeilClient(URL, noise=noise).infer(torch.zeros(1, 128, 32, 32))


def test_only_a_noise_transform_is_sent() -> None:
    class AddTiny(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1e-30

    with pytest.raises(ServingError, match="must be a veil NoiseTransform"):
        VeilClient(URL, noise=AddTiny(), head=nn.Identity())


def test_the_head_comes_from_the_transform(weights: Path, image: torch.Tensor) -> None:
    tr = load_transform(DEFAULT, weights)
    c = VeilClient(URL, transform=tr, weights=weights)
    assert c.head is not None and state_fingerprint(c.head) == tr.meta["head_sha256"]
    sent, _ = c.release([image])
    assert sent.shape == (1, *tr.noise.shape)
    # the old path built the RDCL head for any noise of the same shape: now refused or checked
    with pytest.raises(ServingError, match="would guess the head"):
        VeilClient(URL, noise=tr.noise, weights=weights)
    rdcl_head = transform_head(weights, load_transform(RDCL, weights))
    with pytest.raises(ServingError, match="not the one transform"):
        VeilClient(URL, transform=tr, head=rdcl_head)
    with pytest.raises(ServingError, match="needs weights"):
        VeilClient(URL, transform=tr)


def test_degenerate_noise_is_refused_before_sending(weights: Path, image: torch.Tensor) -> None:
    tr = load_transform(DEFAULT, weights)
    c = VeilClient(URL, transform=tr, weights=weights)
    c.release([image])  # the release as audited goes
    tr.noise.smax = 1e-9  # what the tampered transform.json did, now in memory
    with pytest.raises(ServingError, match="below its release's recorded floor"):
        c.release([image])
    # without a transform (no recorded floor): noise that adds only mu, or 1e-30, is caught too
    head = transform_head(weights, tr)
    only_mu = NoiseTransform(tr.noise.shape, smin=0.0, smax=1e-30, granularity="channel")
    with torch.no_grad():
        only_mu.mu.fill_(3.0)
    with pytest.raises(ServingError, match="negligible"):
        VeilClient(URL, noise=only_mu, head=head).release([image])
    assert c.last_sent is None


def test_expect_release_pins_the_audited_digest(weights: Path) -> None:
    tr = load_transform(DEFAULT, weights)
    VeilClient(URL, transform=tr, weights=weights, expect_release=tr.meta["release_sha256"][:16])
    with pytest.raises(TransformError, match="is not the audited release"):
        VeilClient(URL, transform=DEFAULT, weights=weights, expect_release="f" * 64)
    with pytest.raises(ServingError, match="needs transform"):
        VeilClient(URL, allow_clean=True, expect_release="f" * 64)
