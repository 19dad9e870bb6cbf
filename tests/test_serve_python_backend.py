"""``veil export triton --backend python``: a repository the wheel's own Triton runs as is."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from veil.errors import ServingError
from veil.serve import export as ex
from veil.serve.python_backend import TritonProcess, python_model_source
from veil.serve.server import ServerConfig, VeilServer, free_ports
from veil.serve.validate import ACTIVATION_DIMS, BASE_MODEL, INPUT_NAME, NOISY_MODEL

pytestmark = pytest.mark.slow


class TinyTail(nn.Module):
    """A cheap tail with the served output shapes (21824 anchors), distinct per ``shift``."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(128, 6, 1)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).flatten(2).transpose(1, 2)  # [N, 1024, 6]
        y = y.repeat(1, 22, 1)[:, :21824] + self.shift
        return y[..., :4], y[..., 4:]


def _process(repo: Path, tmp_path: Path, ports: list[int]) -> TritonProcess:
    """Triton on ``repo`` on loopback, no access token, its log in ``tmp_path``."""
    loop = "127.0.0.1"
    return TritonProcess(
        repo, tmp_path / "ws", http=(loop, ports[0]), grpc=(loop, ports[1]), metrics=(loop, ports[2]),
        access_token=None, log_file=tmp_path / "triton.log",
    )  # fmt: skip


def _infer(url: str, model: str, x: np.ndarray) -> tuple[int, dict]:
    """A JSON-encoded KServe v2 request (what any HTTP client can send): (status, reply)."""
    body = {
        "inputs": [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_exported_python_repository_runs_on_triton(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base, noisy = TinyTail(0.0), TinyTail(1.0)
    out = tmp_path / "model_repository"
    result = ex.export_triton_repository(out, base, noisy, backend="python")
    for name in (BASE_MODEL, NOISY_MODEL):
        cfg = ex.parse_model_config(out / name / "config.pbtxt")
        assert cfg.backend == "python" and not cfg.platform  # type: ignore[attr-defined]
        assert cfg.parameters["device"].string_value == "cpu"  # type: ignore[attr-defined]
        assert (out / name / "1" / "model.py").read_bytes() == python_model_source()
        assert result.max_abs_diff[name] < 1e-4
    assert json.loads((out / ex.MANIFEST).read_text())["backend"] == "python"

    ports = free_ports(3)
    proc = _process(out, tmp_path, ports)
    proc.start([BASE_MODEL, NOISY_MODEL])
    try:
        url = f"127.0.0.1:{ports[0]}"
        # JSON-encoded batch 1 (2.7 MB): what any HTTP client can send
        x = np.random.default_rng(0).standard_normal((1, *ACTIVATION_DIMS)).astype(np.float32) * 0.1
        for name, tail in ((BASE_MODEL, base), (NOISY_MODEL, noisy)):
            status, reply = _infer(url, name, x)
            assert status == 200, reply
            got = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in reply["outputs"]}
            with torch.inference_mode():
                loc, conf = tail(torch.from_numpy(x))
            assert np.abs(got["OUTPUT__0"] - loc.numpy()).max() < 1e-4
            assert np.abs(got["OUTPUT__1"] - torch.softmax(conf, -1).numpy()).max() < 1e-4
        bad = x.copy()
        bad[0, 5, 3, 2] = np.inf
        status, reply = _infer(url, NOISY_MODEL, bad)
        assert status == 400 and "NaN or Inf" in reply["error"]
        assert _infer(url, NOISY_MODEL, x)[0] == 200  # and it keeps serving
    finally:
        proc.stop()
    assert not proc.is_alive()


def test_engine_options_are_checked() -> None:
    tails = {BASE_MODEL: ex.ScoresTail(TinyTail(0.0))}
    with pytest.raises(ServingError, match="unknown engine"):
        VeilServer(tails, ServerConfig(engine="flask"))
    with pytest.raises(ServingError, match="on_request needs engine='pytriton'"):
        VeilServer(tails, ServerConfig(), on_request=lambda name, x: None)
    with pytest.raises(ServingError, match="record_dir needs engine='python'"):
        VeilServer(tails, ServerConfig(engine="pytriton", record_dir=Path("r")))
    cores = len(os.sched_getaffinity(0))
    auto = VeilServer(tails, ServerConfig()).instances_and_threads()
    assert auto == ((2, max(1, cores // 2)) if cores >= 2 else (1, 1))
    assert VeilServer(tails, ServerConfig(instances=3, threads=5)).instances_and_threads() == (3, 5)
    assert VeilServer(tails, ServerConfig(engine="pytriton")).instances_and_threads() == (1, 0)
    with pytest.raises(ServingError, match="unknown backend"):
        ex.export_triton_repository(Path("unused"), TinyTail(0.0), backend="tensorflow")


def test_a_broken_model_fails_the_start_with_triton_s_reason(tmp_path: Path) -> None:
    out = tmp_path / "model_repository"
    ex.export_triton_repository(out, TinyTail(0.0), backend="python")
    (out / NOISY_MODEL / "1" / "model.pt").write_bytes(b"not torchscript")
    ports = free_ports(3)
    proc = _process(out, tmp_path, ports)
    with pytest.raises(ServingError, match=r"Triton exited while starting.*(zip archive|model)"):
        proc.start([BASE_MODEL, NOISY_MODEL], timeout_s=120)
    proc.stop()


def test_a_lone_batch_gets_every_core_and_concurrent_ones_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """triton_model._Cores: the threads a batch runs on depend on whether another instance is busy."""
    import importlib.util
    import sys
    import types

    import torch

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("pb_utils"))
    spec = importlib.util.spec_from_file_location("veil_triton_model", python_model_path())
    assert spec is not None and spec.loader is not None
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    before = torch.get_num_threads()
    try:
        a = model._Cores(str(tmp_path), "face_detection_noisy_0", alone=4, shared=2)
        b = model._Cores(str(tmp_path), "face_detection_noisy_1", alone=4, shared=2)
        with a:
            assert torch.get_num_threads() == 4  # b idle
            with b:
                assert torch.get_num_threads() == 2  # a busy
        with b:
            assert torch.get_num_threads() == 4  # a done: its lock is released
    finally:
        torch.set_num_threads(before)


def python_model_path() -> Path:
    from veil.serve import python_backend

    return Path(python_backend.__file__).with_name("triton_model.py")
