"""Any model through veil's serving: protect -> fit -> save -> load -> serve on a real Triton -> VeilClient.

Three small models, none of them FaceBoxes: a torchvision ResNet-18 split at ``layer2`` (64x64 images), an
``nn.Sequential`` MLP on 30-feature vectors, and a transformer-style text classifier split after its first
block (integer tokens in, a float activation on the wire, a dict out). One real Triton per model.

Every transform is made with the public API (``veil.protect(...).fit(...).save(dir)``, ``veil.load``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

import veil
from veil.client import VeilClient
from veil.errors import ServingError, TransformError
from veil.serve.server import ServerConfig, VeilServer, free_ports

pytestmark = pytest.mark.slow


class Block(nn.Module):
    """Pre-norm self-attention + MLP (written out: torch.fx traces it)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.mlp(self.norm2(x))


class TextClassifier(nn.Module):
    """Embedding -> blocks -> mean pooling -> linear; returns a dict (logits and the pooled features)."""

    def __init__(self, vocab: int = 50, d: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        pooled = self.blocks(self.embed(tokens)).mean(dim=1)
        return {"logits": self.head(pooled), "pooled": pooled}


def resnet() -> tuple[nn.Module, str, Tensor]:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10).eval(), "layer2", torch.randn(2, 3, 64, 64)


def mlp() -> tuple[nn.Module, str, Tensor]:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    return net.eval(), "1", torch.randn(4, 30)


def text() -> tuple[nn.Module, str, Tensor]:
    torch.manual_seed(2)
    return TextClassifier().eval(), "blocks.0", torch.randint(0, 50, (3, 12))


MODELS = {"resnet": resnet, "mlp": mlp, "text": text}


def make_transform(name: str, out: Path, steps: int = 3) -> Path:
    """protect -> fit (a few steps) -> save, with the public API."""
    model, split, x = MODELS[name]()
    p = veil.protect(model, split=split, alpha=0.5, example=x, name=name)
    p.fit([x] * steps, steps=steps, progress=False)
    return p.save(out)


def load(path: Path, model: nn.Module, example: Tensor) -> Any:
    """``veil.load(dir, model)``; ``example`` is unused (the input spec rebuilds one)."""
    return veil.load(path, model)


def start(path: Path, **kw: Any) -> VeilServer:
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, instances=1, **kw)
    return VeilServer.from_transform(path, config).start()


def local_tail(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path / "tail.pt")).eval()


def assert_same(remote: Any, local: Any) -> None:
    r, rs = pytree.tree_flatten(remote)
    w, ws = pytree.tree_flatten(local)
    assert rs == ws, (rs, ws)
    for a, b in zip(r, w, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["resnet", "mlp", "text"])
def test_any_model_through_a_real_triton(tmp_path: Path, name: str) -> None:
    path = make_transform(name, tmp_path / name)
    model, _, x = MODELS[name]()
    q = load(path, model, x)
    tail = local_tail(path)
    with start(path) as server:
        assert list(server.served) == [f"{name}_noisy"]  # the clean base is not served
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            client = VeilClient(url, protocol, transform=q, timeout=30)
            assert client.model == f"{name}_noisy"
            out = client.infer(x)
            first = client.last_sent
            assert first is not None and first.shape == (len(x), *q.noise.shape)
            with torch.inference_mode():
                assert_same(out, tail(torch.from_numpy(first)))
                clean = q.head(x).numpy()
            assert not np.allclose(first, clean)  # only the release left
            client.infer(x)
            assert not np.array_equal(first, client.last_sent)  # fresh noise per call
            client.close()
        if name == "text":
            assert isinstance(out, dict) and set(out) == {"logits", "pooled"}
        if name == "mlp":
            _bad_requests_refused(server, q.noise.shape)
    other, _, _ = MODELS["mlp" if name != "mlp" else "resnet"]()
    with pytest.raises(TransformError, match="model"):
        load(path, other, x)


def _bad_requests_refused(server: VeilServer, dims: tuple[int, ...]) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    c = tc.InferenceServerClient(server.endpoints.http)

    def send(a: np.ndarray) -> Any:
        inp = tc.InferInput("INPUT__0", list(a.shape), "FP32")
        inp.set_data_from_numpy(a, binary_data=True)
        return c.infer("mlp_noisy", [inp])

    good = np.random.default_rng(0).standard_normal((2, *dims)).astype(np.float32)
    assert send(good).as_numpy("OUTPUT__0").shape == (2, 2)
    nan = good.copy()
    nan[0, 0] = np.nan
    for bad in (good[:, :-1], np.zeros((0, *dims), np.float32), nan, good.reshape(1, 2, *dims)):
        with pytest.raises(InferenceServerException):
            send(np.ascontiguousarray(bad))
    assert send(good).as_numpy("OUTPUT__0").shape == (2, 2)  # still serving
    c.close()


def test_a_head_that_is_not_the_recorded_one_is_refused(tmp_path: Path) -> None:
    path = make_transform("mlp", tmp_path / "mlp", steps=1)
    model, _, x = mlp()
    q = load(path, model, x)
    with torch.no_grad():
        next(q.head.parameters()).add_(0.01)  # the caller's model changed after loading
    with pytest.raises(ServingError, match="head_sha256"):
        VeilClient("127.0.0.1:1", transform=q)
