"""Issue 33: veil.protect for any model — images, vectors, token sequences; fit, release, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

import veil
from toy_models import Block
from veil.errors import InputError, TransformError


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(Block(d, heads=2), Block(d, heads=2))
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(tokens)).mean(1))


def _mlp_and_data() -> tuple[nn.Module, list[Tensor]]:
    """A small MLP trained (briefly) on a synthetic 30-feature, 2-class problem, and eight batches of it."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(30, generator=gen)
    xs = [torch.randn(32, 30, generator=gen) for _ in range(8)]
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(3):
        for x in xs:
            loss = nn.functional.cross_entropy(mlp(x), (x @ w > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.eval(), xs


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_resnet18_at_layer2_round_trips(resnet: nn.Module, tmp_path: Path) -> None:
    example = torch.randn(2, 3, 32, 32)
    assert "layer2" in veil.split_points(resnet, example)
    p = veil.protect(resnet, split="layer2", alpha=0.2, example=example, task="classification")
    assert isinstance(p, veil.Protected) and p.split == "layer2" and p.noise.mu.shape == (128, 1, 1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert p(x).shape == resnet(x).shape == (4, 10)
    r1, r2 = p.release(x), p.release(x)
    assert r1.shape == (4, 128, 4, 4) and not torch.equal(r1, r2)  # fresh noise on every call
    p.fit([torch.randn(4, 3, 32, 32) for _ in range(2)], steps=3, progress=False)
    out = p.save(tmp_path / "r18")
    assert (out / "tail.pt").is_file()
    meta = json.loads((out / "transform.json").read_text())
    assert meta["wire_spec"] == {
        "name": "INPUT__0",
        "dtype": "float32",
        "shape": [128, 4, 4],
        "feature_axis": 0,
        "dynamic": [1, 2],
    }
    assert meta["output_spec"]["outputs"] == [
        {"name": "OUTPUT__0", "dtype": "float32", "shape": [10], "dynamic": []}  # logits: fixed at any size
    ]
    assert meta["triton"] == {"base": "resnet_base", "noisy": "resnet_noisy"}
    assert meta["input_spec"]["shape"] == [3, 32, 32] and meta["task"] == "classification"
    q = veil.load(out, resnet)
    for name in ("mu", "rho", "keep"):
        assert torch.equal(getattr(q.noise, name), getattr(p.noise, name))
    assert q.noise.smax == p.noise.smax and q.alpha == p.alpha
    release = p.release(x)
    with torch.no_grad():
        assert (q.tail(release) - p.tail(release)).abs().max() < 1e-6
        scripted = torch.jit.load(str(out / "tail.pt"))
        assert (scripted(release) - p.tail(release)).abs().max() < 1e-5
        assert q(torch.randn(2, 3, 64, 64)).shape == (2, 10)  # per-channel noise: any input size
    torch.manual_seed(1)
    other = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(TransformError, match=r"made for model \w{12}… but this model is \w{12}…") as err:
        veil.load(out, other)
    assert "\n" not in str(err.value)
    meta["alpha"] = 0.9  # tampered
    (out / "transform.json").write_text(json.dumps(meta))
    with pytest.raises(TransformError, match="edited"):
        veil.load(out, resnet)


def test_mlp_fit_learns_and_alpha_raises_sigma() -> None:
    mlp, xs = _mlp_and_data()
    points = veil.split_points(mlp, xs[0])
    p = veil.protect(mlp, split=points[1], alpha=0.02, example=xs[0])
    assert p.noise.mu.shape == (32,)  # a vector: one (mu, rho) per feature
    with torch.no_grad():
        assert p(xs[0]).shape == (32, 2)
    before = p.evaluate(xs)
    sigma0 = float(p.noise.mean_sigma().detach())
    result = p.fit(xs, steps=40, lr=0.05, lr_tail=1e-3, progress=False)
    after = p.evaluate(xs)
    print(
        f"mlp alpha=0.02: task {before:.4f} -> {after:.4f}, "
        f"mean sigma {sigma0:.3f} -> {result['mean_sigma']:.3f}"
    )
    assert after < 0.7 * before
    loud = veil.protect(mlp, split=points[1], alpha=0.9, example=xs[0])
    res = loud.fit(xs, steps=40, lr=0.05, progress=False)
    print(
        f"mlp alpha=0.9: mean sigma {sigma0:.3f} -> {res['mean_sigma']:.3f}, "
        f"suppressed {res['suppressed_fraction']}"
    )
    assert res["mean_sigma"] > 2 * sigma0 and res["mean_sigma"] > result["mean_sigma"]


def test_release_follows_sigma() -> None:
    mlp, xs = _mlp_and_data()
    p = veil.protect(mlp, split=veil.split_points(mlp, xs[0])[1], alpha=0.2, example=xs[0])
    with torch.no_grad():
        p.noise.mu.uniform_(-1, 1)
        p.noise.rho.uniform_(-2, 1)
        x = xs[0][:1].expand(20000, 30)
        clean = p.head(x)
        z = (p.release(x) - clean - p.noise.mu) / p.noise.sigma()
    assert z.mean(0).abs().max() < 0.05 and (z.std(0) - 1).abs().max() < 0.05


def test_tokens_per_feature_noise_and_any_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    tokens = torch.randint(0, 50, (4, 12))
    p = veil.protect(model, split="blocks.0", alpha=0.2, example=tokens, task="classification")
    assert p.noise.mu.shape == (1, 16) and p.meta["wire_spec"]["dynamic"] == [0]
    batches = [(torch.randint(0, 50, (8, 12)), torch.zeros(8)) for _ in range(3)]  # (input, label) tuples
    p.fit(batches, steps=4, progress=False)
    with torch.no_grad():
        assert p(torch.randint(0, 50, (2, 7))).shape == (2, 3)  # another sequence length
    q = veil.load(p.save(tmp_path / "text"), model)
    r = p.release(tokens)
    with torch.no_grad():
        assert (q.tail(r) - p.tail(r)).abs().max() < 1e-6
    # the same model given as head= / tail= (as for a model that cannot be traced)
    head = nn.Sequential(model.embed, model.blocks[0])
    tail = nn.Sequential(model.blocks[1], _MeanLinear(model.head))
    hp = veil.protect(head=head, tail=tail, alpha=0.2, example=tokens)
    assert hp.noise.mu.shape == (1, 16) and hp.split is None
    with torch.no_grad():
        assert hp(tokens).shape == (4, 3)
    hq = veil.load(hp.save(tmp_path / "pair"), head=head, tail=tail)
    assert torch.equal(hq.noise.rho, hp.noise.rho)


class _MeanLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.mean(1))


def test_dict_outputs_and_element_noise_needs_its_size() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            y = self.out(torch.relu(self.conv(x)))
            return {"map": y, "score": y.mean((2, 3))}

    model = Two().eval()
    p = veil.protect(model, split="conv", alpha=0.2, example=torch.randn(2, 3, 8, 8), granularity="element")
    assert p.noise.mu.shape == (8, 8, 8) and p.meta["wire_spec"]["dynamic"] == []
    p.fit([torch.randn(4, 3, 8, 8)], steps=2, progress=False)
    with torch.no_grad():
        out = p(torch.randn(2, 3, 8, 8))
        assert set(out) == {"map", "score"} and out["score"].shape == (2, 2)
        with pytest.raises(InputError, match="needs that exact input size"):
            p(torch.randn(2, 3, 16, 16))


def test_bad_options_are_one_line() -> None:
    mlp, xs = _mlp_and_data()
    p = veil.protect(mlp, split=veil.split_points(mlp, xs[0])[1], alpha=0.2, example=xs[0])
    for bad in ({"lr": float("nan")}, {"lr_tail": -1.0}):
        with pytest.raises(InputError, match="finite number > 0") as err:
            p.fit(xs, steps=2, progress=False, **bad)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="alpha"):
        veil.protect(mlp, split="1", alpha=float("nan"), example=xs[0])
    with pytest.raises(InputError, match="can be read only once"):
        p.fit(iter(xs[:2]), steps=5, progress=False)


def test_fit_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    mlp, xs = _mlp_and_data()
    split = veil.split_points(mlp, xs[0])[1]
    ckpt = tmp_path / "fit.ckpt"
    p = veil.protect(mlp, split=split, alpha=0.2, example=xs[0])
    p.fit(xs, steps=6, checkpoint=ckpt, progress=False)
    q = veil.protect(mlp, split=split, alpha=0.2, example=xs[1])  # a new process would start like this
    result = q.fit(xs, steps=10, checkpoint=ckpt, progress=False)
    assert result["resumed_at"] == 6 and [h[0] for h in q.history] == list(range(1, 11))
    assert q.noise.smax == p.noise.smax
    assert torch.load(ckpt, weights_only=True)["step"] == 10


def test_import_veil_is_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, veil; assert 'torch' not in sys.modules; print(callable(veil.protect))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    assert callable(veil.protect) and isinstance(veil.Protected, type)


def test_only_sizes_the_tail_accepts_are_dynamic(tmp_path: Path) -> None:
    """Per-channel noise takes any size, a flatten-into-linear tail does not: save records what varies."""
    torch.manual_seed(0)
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1))
    x = torch.randn(2, 3, 8, 8)
    got = {}
    for name, model in (("fixed", fixed.eval()), ("pooled", pooled.eval())):
        p = veil.protect(model, split="1", alpha=0.2, example=x)
        assert p.meta["wire_spec"]["dynamic"] == [1, 2]  # what the noise alone would accept
        got[name] = json.loads((p.save(tmp_path / name) / "transform.json").read_text())
    assert got["fixed"]["wire_spec"]["dynamic"] == []
    assert got["fixed"]["output_spec"]["outputs"][0]["dynamic"] == []
    assert got["pooled"]["wire_spec"]["dynamic"] == [1, 2]
    assert got["pooled"]["output_spec"]["outputs"][0]["dynamic"] == [1, 2]  # (5, H, W) follows the input
