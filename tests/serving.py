"""Helpers shared by the tests that talk to a real Triton server (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.client import VeilClient
from veil.noise import NoiseTransform
from veil.serve.validate import ACTIVATION_DIMS

TOKEN = "test-token-0123456789"
ACT_BYTES = int(np.prod(ACTIVATION_DIMS)) * 4


class FixedNoise(NoiseTransform):
    """Adds one pre-sampled tensor of std ``sigma``: local and remote paths see exactly the same noise.

    A NoiseTransform (the client sends only those), declaring the σ its sample was drawn with.
    """

    def __init__(self, sample: torch.Tensor, sigma: float = 0.5) -> None:
        super().__init__(tuple(sample.shape[1:]), smin=sigma, smax=sigma * (1 + 1e-6))
        self.sample = sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sample[: x.shape[0]]


class Recorder:
    """Server-side record of every activation that reached a tail: what was on the wire."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, np.ndarray]] = []
        self.lock = threading.Lock()

    def __call__(self, model: str, x: np.ndarray) -> None:
        with self.lock:
            self.seen.append((model, x.copy()))

    def take(self) -> list[tuple[str, np.ndarray]]:
        with self.lock:
            out, self.seen = self.seen, []
        return out


class DirRecorder:
    """The python engine's record of every accepted activation: ``<model>-<id>.npy`` files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def take(self) -> list[tuple[str, np.ndarray]]:
        out = []
        for f in sorted(self.folder.glob("*.npy")):
            if not f.name.startswith("."):
                out.append((f.name.rsplit("-", 1)[0], np.load(f)))
                f.unlink()
        return out


def client(server: Any, protocol: str, **kw: Any) -> VeilClient:
    ep = server.endpoints
    return VeilClient(ep.http if protocol == "http" else ep.grpc, protocol, timeout=20, **kw)


def assert_same_boxes(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g, w, atol=1e-3), (g - w).abs().max()


def assert_same_outputs(
    remote: tuple[torch.Tensor, torch.Tensor], local: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Same regressions; same logits up to softmax's shift (the server returns scores, see export)."""
    assert (remote[0] - local[0]).abs().max().item() < 1e-4
    assert (remote[1] - torch.log_softmax(local[1], dim=-1)).abs().max().item() < 1e-4
