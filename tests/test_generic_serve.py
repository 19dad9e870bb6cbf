"""Any model through veil's serving: protect -> fit -> save -> load -> serve on a real Triton -> VeilClient.

Three small models, none of them FaceBoxes: a torchvision ResNet-18 split at ``layer2`` (64x64 images), an
``nn.Sequential`` MLP on 30-feature vectors, and a transformer-style text classifier split after its first
block (integer tokens in, a float activation on the wire, a dict out). One real Triton per model.

Until ``veil.protect`` / ``veil.load`` land, :func:`make_transform` writes the agreed transform directory
(transform.json + transform.safetensors + tail.pt, wire/output specs) with ``veil.split.cut`` and
``veil.artifact.save_transform``, and :func:`load` is the client side's ``veil.load`` stand-in.
"""

from __future__ import annotations

import copy
import hashlib
import io
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from veil.artifact import load_transform, save_transform, state_fingerprint
from veil.client import VeilClient
from veil.errors import ServingError
from veil.noise import NoiseTransform
from veil.serve.server import ServerConfig, VeilServer, free_ports
from veil.split import cut

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


def _leaf_spec(t: Tensor, i: int) -> dict[str, Any]:
    return {"name": f"OUTPUT__{i}", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape[1:])}


def make_transform(name: str, out: Path, steps: int = 3) -> Path:
    """protect -> fit (a few steps) -> save, as the agreed directory format."""
    model, split, x = MODELS[name]()
    head, tail = cut(model, split, x)
    tail = copy.deepcopy(tail)  # fitted on its own: the model (and its fingerprint) stay as they were
    with torch.no_grad():
        act = head(x)
        want = model(x)
    axis = act.dim() - 2 if act.dim() == 3 else 0  # tokens: one (mu, rho) per feature
    noise = NoiseTransform(
        tuple(act.shape[1:]), smin=0.05, smax=1.0, granularity="channel", feature_axis=axis
    )
    params = [*noise.parameters(), *tail.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):  # fit: the tail on noisy releases, the noise towards more σ
        got = tail(noise(act))
        loss = sum(
            nn.functional.mse_loss(g, w)
            for g, w in zip(*(pytree.tree_leaves(o) for o in (got, want)), strict=True)
        )
        loss = loss - 0.01 * noise.mean_sigma()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tail.eval()
    with torch.no_grad():
        release = noise(act)
        traced = torch.jit.trace(tail, release, strict=False)
        leaves, treespec = pytree.tree_flatten(tail(release))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    data = buf.getvalue()
    meta = {
        "kind": "generic",
        "split": split,
        "task": "classification",
        "alpha": 0.5,
        "model_fingerprint": state_fingerprint(model),
        "input_spec": {"dtype": str(x.dtype).removeprefix("torch."), "shape": list(x.shape[1:])},
        "wire_spec": {
            "name": "INPUT__0",
            "dtype": "float32",
            "shape": list(act.shape[1:]),
            "feature_axis": axis,
            "dynamic": [],
        },
        "output_spec": {
            "treespec": pytree.treespec_dumps(treespec),
            "leaves": [_leaf_spec(t, i) for i, t in enumerate(leaves)],
        },
        "triton": {"base": f"{name}_base", "noisy": f"{name}_noisy"},
        "feature_axis": axis,
        "tail_sha256": hashlib.sha256(data).hexdigest(),
    }
    return save_transform(
        out,
        noise,
        meta,
        tail_state=dict(tail.state_dict()),
        head_sha256=state_fingerprint(head),
        files={"tail.pt": data},
    )


def load(path: Path, model: nn.Module, example: Tensor) -> Any:
    """``veil.load(dir, model)`` stand-in: the transform, and the head cut from the caller's model."""
    tr = load_transform(path)
    if state_fingerprint(model) != tr.meta["model_fingerprint"]:
        raise ServingError(f"{path} was made for another model")
    head, _ = cut(model, tr.meta["split"], example)
    return types.SimpleNamespace(head=head, noise=tr.noise, meta=tr.meta, path=path)


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
    with pytest.raises(ServingError, match="another model"):
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
