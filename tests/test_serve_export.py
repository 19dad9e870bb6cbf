"""The Triton model repository: configs parse as Triton's protobuf, TorchScript matches, atomicity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from google.protobuf import text_format
from torch import nn
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from veil.errors import ServingError
from veil.faceboxes.detect import priors
from veil.imageio import load_image, preprocess
from veil.serve import export as ex
from veil.serve.validate import ACTIVATION_DIMS, BASE_MODEL, NOISY_MODEL, NUM_ANCHORS


def test_contract_matches_the_detector() -> None:
    assert priors(1024, 1024).shape[0] == NUM_ANCHORS


@pytest.mark.parametrize("gpu", [False, True])
def test_config_parses_as_triton_model_config(gpu: bool) -> None:
    cfg = text_format.Parse(ex.model_config_text(NOISY_MODEL, gpu=gpu), mc.ModelConfig())
    assert cfg.name == NOISY_MODEL and cfg.platform == "pytorch_libtorch" and cfg.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("INPUT__0", mc.TYPE_FP32, [128, 32, 32])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("OUTPUT__0", mc.TYPE_FP32, [21824, 4]),
        ("OUTPUT__1", mc.TYPE_FP32, [21824, 2]),
    ]
    assert cfg.HasField("dynamic_batching") and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]


class FakeTail(nn.Module):
    """A cheap tail with the served shapes; ``branchy`` adds data-dependent control flow (untraceable)."""

    def __init__(self, scale: float = 1.0, branchy: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(128, 6, 1)
        self.scale, self.branchy = scale, branchy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).flatten(2).transpose(1, 2) * self.scale  # [N, 1024, 6]
        if self.branchy and bool(x.mean() > 0.1):
            y = y * 2
        return y[..., :4], y[..., 4:]


@pytest.fixture(scope="module")
def repo(faceboxes: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real export: the base tail and a distinct noise-trained tail given as a state dict."""
    from veil.faceboxes.registry import get_spec, split_model

    head, base = split_model(faceboxes, get_spec("faceboxes").default_split)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for k in state:
        if "conf" in k and k.endswith("bias"):
            state[k] = (state[k].view(-1, 2) + torch.tensor([0.5, -0.5])).view(-1)
    noisy = ex.noisy_tail_from_state_dict(base, state)
    out = tmp_path_factory.mktemp("export") / "model_repository"
    result = ex.export_triton_repository(out, base, noisy)
    return {"path": out, "result": result, "head": head, "base": base, "noisy": noisy}


def test_repository_layout_and_configs(repo: dict[str, Any]) -> None:
    path: Path = repo["path"]
    for name in (BASE_MODEL, NOISY_MODEL):
        assert (path / name / "1" / "model.pt").is_file()
        cfg = ex.parse_model_config(path / name / "config.pbtxt")
        assert cfg.name == name  # type: ignore[attr-defined]
        assert repo["result"].max_abs_diff[name] < 1e-4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_torchscript_loads_and_matches_the_tail(repo: dict[str, Any], fddb_sample: Path) -> None:
    loaded = ex.load_repository(repo["path"])
    img = load_image(sorted(fddb_sample.rglob("*.jpg"))[0])
    with torch.inference_mode():
        act = repo["head"](preprocess([img]).tensor)
        for name, tail in ((BASE_MODEL, repo["base"]), (NOISY_MODEL, repo["noisy"])):
            loc, scores = loaded[name][1](act)
            want_loc, want_conf = tail(act)
            assert (loc - want_loc).abs().max().item() < 1e-4
            assert (scores - torch.softmax(want_conf, -1)).abs().max().item() < 1e-4
            assert (ex.scores_to_logits(scores) - torch.log_softmax(want_conf, -1)).abs().max().item() < 1e-4
        base_scores = loaded[BASE_MODEL][1](act)[1]
        assert (base_scores - loaded[NOISY_MODEL][1](act)[1]).abs().max().item() > 1e-3  # two distinct tails


def test_server_serves_the_exported_torchscript(repo: dict[str, Any]) -> None:
    """``veil serve --model-repository``: the runners wrap the repository's TorchScript tails."""
    import numpy as np

    from veil.serve.server import VeilServer

    server = VeilServer.from_repository(repo["path"])
    x = np.random.default_rng(0).standard_normal((2, *ACTIVATION_DIMS)).astype(np.float32)
    out = server.runners[NOISY_MODEL]([{"INPUT__0": x[:1]}, {"INPUT__0": x[1:]}])  # two batched requests
    with torch.inference_mode():
        want_loc, want_conf = repo["noisy"](torch.from_numpy(x))
    got_loc = np.concatenate([o["OUTPUT__0"] for o in out])
    got_scores = np.concatenate([o["OUTPUT__1"] for o in out])
    assert np.abs(got_loc - want_loc.numpy()).max() < 1e-4
    assert np.abs(got_scores - torch.softmax(want_conf, -1).numpy()).max() < 1e-4
    bad = x[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ServingError, match="NaN"):
        server.runners[NOISY_MODEL]([{"INPUT__0": bad}])


@pytest.mark.slow
def test_python_engine_serves_the_exported_repository(repo: dict[str, Any], tmp_path: Path) -> None:
    """``veil serve --model-repository`` for real: Triton's backend stub runs the exported TorchScript."""
    from veil.client import VeilClient
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=tmp_path / "t.log")
    x = torch.randn(2, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(4))
    with VeilServer.from_repository(repo["path"], config) as server:
        client = VeilClient(server.endpoints.grpc, "grpc", allow_clean=True, model=NOISY_MODEL, timeout=30)
        loc, logits = client.infer(x)
    with torch.inference_mode():
        want_loc, want_conf = repo["noisy"](x)
    assert (loc - want_loc).abs().max().item() < 1e-4
    assert (logits - torch.log_softmax(want_conf, -1)).abs().max().item() < 1e-4


def test_wrong_contract_is_refused(repo: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo["path"], copy)
    cfg = copy / NOISY_MODEL / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: 21824", "dims: 100", 1))
    with pytest.raises(ServingError, match="contract"):
        ex.load_repository(copy)
    cfg.write_text("name: {{ broken")
    with pytest.raises(ServingError, match="not a valid Triton model config"):
        ex.load_repository(copy)
    with pytest.raises(ServingError, match="not found"):
        ex.load_repository(tmp_path / "absent")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_export_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    with pytest.raises(ServingError, match="differs"):
        ex.export_triton_repository(out, FakeTail(branchy=True))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    first = ex.export_triton_repository(out, FakeTail())
    with pytest.raises(ServingError, match="already exists"):
        ex.export_triton_repository(out, FakeTail(scale=2.0))
    replacement = FakeTail(scale=2.0)
    second = ex.export_triton_repository(out, replacement, overwrite=True)
    assert first.sha256 != second.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # old tree and temporaries are gone
    x = torch.ones(2, *ACTIVATION_DIMS)
    module = ex.load_torchscript(out / BASE_MODEL / "1" / "model.pt")
    with torch.inference_mode():
        for got, want in zip(module(x), ex.ScoresTail(replacement)(x), strict=True):
            torch.testing.assert_close(got, want)


def test_noisy_state_dict_must_fit() -> None:
    with pytest.raises(ServingError, match="do not fit"):
        ex.noisy_tail_from_state_dict(FakeTail(), {"nope": torch.zeros(1)})


def test_cli_export_triton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.cli.main import app

    monkeypatch.setattr(ex, "build_tails", lambda weights, tail_state_dict=None: (FakeTail(), FakeTail(0.5)))
    out = tmp_path / "mr"
    weights = tmp_path / "w.pth"  # read for finiteness by --model/--weights; the tails come from the stub
    torch.save({"w": torch.zeros(1)}, weights)
    args = ["export", "triton", "--weights", str(weights), "--out", str(out), "--gpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "KIND_GPU" in result.output and "face_detection_noisy carries the base weights" in result.output
    cfg = ex.parse_model_config(out / NOISY_MODEL / "config.pbtxt")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU  # type: ignore[attr-defined]


def test_server_refuses_a_busy_port_at_once() -> None:
    import socket

    from veil.serve.server import ServerConfig, VeilServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = ServerConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2)
        with pytest.raises(ServingError, match=f"127.0.0.1:{port}"):
            VeilServer({BASE_MODEL: ex.ScoresTail(FakeTail())}, config).start()


def test_onnx_repository_matches_the_tail(repo: dict[str, Any], fddb_sample: Path, tmp_path: Path) -> None:
    """``--onnx``: model.onnx files for onnxruntime_onnx, checked by ONNX Runtime on a real activation."""
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx_repository"
    result = ex.export_triton_repository(out, repo["base"], repo["noisy"], backend="onnx")
    img = load_image(sorted(fddb_sample.rglob("*.jpg"))[0])
    with torch.inference_mode():
        act = repo["head"](preprocess([img]).tensor)
        batch = torch.cat([act, act * 0.5])  # batch 2 exercises the dynamic batch axis
        for name, tail in ((BASE_MODEL, repo["base"]), (NOISY_MODEL, repo["noisy"])):
            cfg = ex.parse_model_config(out / name / "config.pbtxt")
            assert cfg.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
            assert "INFERENCE_MODE" not in cfg.parameters  # type: ignore[attr-defined]
            assert result.max_abs_diff[name] < 1e-4
            session = ort.InferenceSession(str(out / name / "1" / "model.onnx"))
            loc, scores = session.run(None, {"INPUT__0": batch.numpy()})
            want_loc, want_conf = tail(batch)
            assert abs(loc - want_loc.numpy()).max() < 1e-4
            assert abs(scores - torch.softmax(want_conf, -1).numpy()).max() < 1e-4
    with pytest.raises(ServingError, match="ONNX repository"):
        ex.load_repository(out)  # veil serve runs TorchScript; ONNX is for the user's own Triton
