"""veil.split.graph: cutting any torch.fx-traceable model after one of its modules (issue 33)."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import Tensor, nn

from toy_models import Block
from veil.errors import SplitPointError
from veil.split import cut, graph_split_points, split_points


def _same(a: object, b: object) -> bool:
    la, sa = torch.utils._pytree.tree_flatten(a)
    lb, sb = torch.utils._pytree.tree_flatten(b)
    return sa == sb and all(torch.equal(x, y) for x, y in zip(la, lb, strict=True))


def _run(model: nn.Module, *x: Tensor) -> object:
    with torch.no_grad():
        return model(*x)


def _one_line(e: pytest.ExceptionInfo[SplitPointError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 100, d: int = 32, classes: int = 4, layer: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 64, d))
        make = (
            (lambda: nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True))
            if layer
            else (lambda: Block(d))
        )
        self.blocks = nn.ModuleList(make() for _ in range(2))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.cls, self.box = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = torch.relu(self.body(self.stem(x)))
        return {"scores": self.cls(f).flatten(1), "boxes": self.box(f).flatten(1)}


def test_resnet_split_points_are_stage_and_block_boundaries(resnet: nn.Module) -> None:
    points = graph_split_points(resnet, torch.randn(1, 3, 64, 64))
    assert {"layer1", "layer2", "layer3", "layer4", "layer2.0", "layer2.1"} <= set(points)
    assert not {"layer2.0.conv1", "layer2.0.bn1", "layer2.0.downsample", "layer1.0.relu", "fc"} & set(points)
    assert points.index("layer1") < points.index("layer2.0") < points.index("layer2") < points.index("layer3")
    assert split_points(resnet) == []  # the registry / nn.Sequential split_points is unchanged


def test_resnet_cut_is_exact_for_any_batch_and_jit_traceable(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    head, tail = cut(resnet, "layer2", x)
    a = _run(head, x)
    assert isinstance(a, Tensor) and a.shape == (2, 128, 8, 8)
    assert torch.equal(_run(tail, a), _run(resnet, x))
    x5 = torch.randn(5, 3, 96, 80)  # other batch size and image size than the example
    assert torch.equal(_run(tail, _run(head, x5)), _run(resnet, x5))
    with torch.no_grad():
        scripted = torch.jit.trace(tail, a.clone())
        assert torch.equal(scripted(head(x5)), resnet(x5))
    # the parts share the model's parameters, under the model's own names
    assert head.get_submodule("layer1.0.conv1").weight is resnet.layer1[0].conv1.weight
    assert "layer2.1.bn2.running_var" in head.state_dict() and "layer3.0.conv1.weight" in tail.state_dict()
    assert not any(k.startswith("layer3") for k in head.state_dict())


def test_resnet_invalid_cut_names_neighbours(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(SplitPointError) as e:
        cut(resnet, "layer2.0.conv1", x)
    msg = _one_line(e)
    assert "'layer2.0.conv1'" in msg and "residual" in msg and "layer1.1, layer2.0" in msg
    with pytest.raises(SplitPointError) as e:
        cut(resnet, "layer1.0.relu", x)
    assert "called 2 times" in _one_line(e)
    with pytest.raises(SplitPointError) as e:
        cut(resnet, "fc", x)
    assert "nothing would be left" in _one_line(e) and "avgpool" in str(e.value)


@pytest.mark.parametrize("name", ["nope", "layer9"])
def test_unknown_name_is_one_line(resnet: nn.Module, name: str) -> None:
    with pytest.raises(SplitPointError) as e:
        cut(resnet, name, torch.randn(1, 3, 64, 64))
    msg = _one_line(e)
    assert f"no module {name!r} in ResNet" in msg and "layer1, layer2, layer3, layer4" in msg
    assert ("did you mean 'layer4'" in msg) == (name == "layer9")


def test_sequential_mlp() -> None:
    mlp = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(4, 30)
    assert graph_split_points(mlp, x) == ["0", "1", "2", "3"]
    head, tail = cut(mlp, "1", x)
    assert _run(head, x).shape == (4, 16)
    x7 = torch.randn(7, 30)
    assert torch.equal(_run(tail, _run(head, x7)), _run(mlp, x7))


@pytest.mark.parametrize("layer", [False, True], ids=["block", "TransformerEncoderLayer"])
def test_transformer_text_classifier(layer: bool) -> None:
    torch.manual_seed(0)
    model = TextClassifier(layer=layer).eval()
    tokens = torch.randint(0, 100, (2, 10))
    points = graph_split_points(model, tokens)
    assert points[:2] == ["blocks.0", "blocks.1"] and "embed" not in points  # tokens.shape[1] crosses too
    head, tail = cut(model, "blocks.0", tokens)
    assert _run(head, tokens).shape == (2, 10, 32)
    other = torch.randint(0, 100, (3, 17))
    assert torch.equal(_run(tail, _run(head, other)), _run(model, other))
    with torch.no_grad():
        scripted = torch.jit.trace(tail, head(tokens))
        assert torch.equal(scripted(head(other)), model(other))
    if not layer:
        with pytest.raises(SplitPointError) as e:
            cut(model, "blocks.0.attn", tokens)
        assert "nearest valid split points: blocks.0" in _one_line(e)


def test_mobilenet_v3_small() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    points = graph_split_points(model, x)
    assert {"features.2", "features.3", "features.5", "features", "avgpool"} <= set(points)
    assert not any(p.startswith("features.5.") for p in points)  # a residual block: only whole
    head, tail = cut(model, "features.3", x)
    x3 = torch.randn(3, 3, 64, 64)
    assert torch.equal(_run(tail, _run(head, x3)), _run(model, x3))
    assert _run(head, x3).shape[:2] == (3, 24)


def test_dict_output() -> None:
    model = DictOut().eval()
    x = torch.randn(2, 3, 16, 16)
    assert graph_split_points(model, x) == ["stem.0", "stem.1", "stem", "body"]
    head, tail = cut(model, "stem", x)
    out = _run(tail, _run(head, torch.randn(1, 3, 16, 16)))
    assert isinstance(out, dict) and set(out) == {"scores", "boxes"}
    x4 = torch.randn(4, 3, 16, 16)
    assert _same(_run(tail, _run(head, x4)), _run(model, x4))
    with torch.no_grad():
        scripted = torch.jit.trace(tail, head(x), strict=False)
        assert _same(scripted(head(x4)), model(x4))


def test_untraceable_model_points_to_protect_head_tail() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.b(h) if h.sum() > 0 else self.b(-h)

    with pytest.raises(SplitPointError) as e:
        cut(Branchy(), "a", torch.randn(2, 4))
    msg = _one_line(e)
    assert "torch.fx cannot trace Branchy" in msg and "veil.protect(head=..., tail=...)" in msg


def test_shared_module_and_second_input() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.mid, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
            h = self.mid(self.mid(self.inp(x)))
            return self.out(h if scale is None else h * scale)

    model = Shared()
    x = torch.randn(3, 4)
    assert graph_split_points(model, x) == ["inp"]  # `mid` runs twice; `scale` defaults to None
    head, tail = cut(model, "inp", x)
    assert torch.equal(_run(tail, _run(head, x)), _run(model, x))
    with pytest.raises(SplitPointError) as e:
        cut(model, "mid", x)
    assert "called 2 times" in _one_line(e)
    with pytest.raises(SplitPointError) as e:
        cut(model, "inp", (x, torch.randn(3, 4)))  # the second input crosses the cut too
    assert "2 values cross" in _one_line(e)


def test_onnx_export_of_the_parts(resnet: nn.Module) -> None:
    onnx = pytest.importorskip("onnx")
    x = torch.randn(1, 3, 32, 32)
    head, tail = cut(resnet, "layer3", x)
    with torch.no_grad():
        a = head(x)
    for part, inp in ((head, x), (tail, a)):
        f = io.BytesIO()
        # output_names is needed: the TorchScript exporter takes anything with a .graph for a ScriptModule
        axes = {"x": {0: "batch"}, "y": {0: "batch"}}
        torch.onnx.export(
            part, (inp,), f, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes=axes
        )
        assert onnx.load_from_string(f.getvalue()).graph.node


def test_non_tensor_crossing_is_refused() -> None:
    class Width(nn.Module):
        def forward(self, x: Tensor) -> int:
            return x.shape[-1]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.width, self.out = nn.Linear(4, 6), Width(), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(torch.ones(2, self.width(self.lin(x))))

    x = torch.randn(3, 4)
    assert graph_split_points(Model(), x) == ["lin"]  # not "width": an int crosses after it
    with pytest.raises(SplitPointError) as e:
        cut(Model(), "width", x)
    assert "not a tensor" in _one_line(e)


def test_training_flags_restored(resnet: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1)).train()
    model[2].eval()
    _head, _tail = cut(model, "1", torch.randn(2, 3))
    assert [m.training for m in model] == [True, True, False]
