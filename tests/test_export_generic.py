"""``veil export triton --transform DIR`` and ``veil serve --transform DIR`` for a protected model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from test_generic_serve import assert_same, load, local_tail, make_transform, mlp, text
from veil.client import VeilClient
from veil.errors import ServingError
from veil.serve.export import parse_model_config
from veil.serve.generic import export_triton
from veil.serve.server import free_ports

pytestmark = pytest.mark.slow


def _config(
    repo: Path, name: str
) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]], object]:
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = parse_model_config(repo / name / "config.pbtxt")

    def rows(ts: object) -> list[tuple[str, str, list[int]]]:
        return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in ts]  # type: ignore[attr-defined]

    return rows(cfg.input), rows(cfg.output), cfg  # type: ignore[attr-defined]


def test_cli_export_triton_config_matches_the_tail(tmp_path: Path) -> None:
    from veil.cli.main import app

    path = make_transform("text", tmp_path / "text", steps=1)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(app, ["export", "triton", "--transform", str(path), "--out", str(repo)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["text_noisy", "veil-export.json"]
    inputs, outputs, cfg = _config(repo, "text_noisy")
    assert cfg.platform == "pytorch_libtorch" and cfg.max_batch_size == 8  # type: ignore[attr-defined]
    assert inputs == [("INPUT__0", "TYPE_FP32", [-1, 32])]  # per-feature noise: any sequence length
    # the tail's real outputs, in the model's pytree order: {"logits": [N, 3], "pooled": [N, 32]}
    assert outputs == [("OUTPUT__0", "TYPE_FP32", [3]), ("OUTPUT__1", "TYPE_FP32", [32])]
    model = torch.jit.load(str(repo / "text_noisy" / "1" / "model.pt"))
    x = torch.randn(2, 12, 32)
    with torch.inference_mode():
        want = local_tail(path)(x)
        got = model(x)
    assert isinstance(got, tuple) and len(got) == 2
    assert (got[0] - want["logits"]).abs().max() < 1e-5 and (got[1] - want["pooled"]).abs().max() < 1e-5
    again = CliRunner().invoke(app, ["export", "triton", "--transform", str(path), "--out", str(repo)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_export_backends_python_and_onnx(tmp_path: Path) -> None:
    path = make_transform("mlp", tmp_path / "mlp", steps=1)
    export_triton(path, tmp_path / "py", backend="python", max_batch_size=4)
    inputs, outputs, cfg = _config(tmp_path / "py", "mlp_noisy")
    assert cfg.backend == "python" and cfg.max_batch_size == 4  # type: ignore[attr-defined]
    assert (tmp_path / "py" / "mlp_noisy" / "1" / "model.py").is_file()
    assert inputs == [("INPUT__0", "TYPE_FP32", [64])] and outputs == [("OUTPUT__0", "TYPE_FP32", [2])]
    pytest.importorskip("onnxruntime")
    export_triton(path, tmp_path / "onnx", backend="onnx")
    _, _, cfg = _config(tmp_path / "onnx", "mlp_noisy")
    assert cfg.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
    assert (tmp_path / "onnx" / "mlp_noisy" / "1" / "model.onnx").is_file()


def test_an_edited_tail_is_refused(tmp_path: Path) -> None:
    path = make_transform("mlp", tmp_path / "mlp", steps=1)
    data = bytearray((path / "tail.pt").read_bytes())
    data[-100] ^= 1
    (path / "tail.pt").write_bytes(bytes(data))
    with pytest.raises(ServingError, match="SHA-256"):
        export_triton(path, tmp_path / "repo")


def test_cli_serve_transform_dir(tmp_path: Path) -> None:
    """The real CLI: ``veil serve --transform DIR`` (no --weights) serves the tail to VeilClient."""
    path = make_transform("mlp", tmp_path / "mlp", steps=2)
    model, _, x = mlp()
    q = load(path, model, x)
    http_port, grpc_port, metrics_port = free_ports(3)
    ports = f"--http-port {http_port} --grpc-port {grpc_port} --metrics-port {metrics_port}".split()
    veil = [sys.executable, "-c", "from veil.cli.main import main; main()"]
    cmd = [*veil, "serve", "--transform", str(path), *ports, "--instances", "1"]
    cmd += ["--triton-log", str(tmp_path / "triton.log")]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("access token"):
                break
        assert any(ln.startswith("models: mlp_noisy;") for ln in lines), lines
        with VeilClient(f"grpc://127.0.0.1:{grpc_port}", transform=q, timeout=20) as c:
            out = c.infer(x)
            assert c.last_sent is not None
            with torch.inference_mode():
                assert_same(out, local_tail(path)(torch.from_numpy(c.last_sent)))
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "\n".join(lines) + rest


def test_serve_refuses_weights_with_a_protected_transform(tmp_path: Path) -> None:
    from veil.cli.serve_cmd import run_server
    from veil.errors import VeilError

    path = make_transform("text", tmp_path / "t", steps=1)
    with pytest.raises(VeilError, match="drop --weights"):
        run_server(transform=path, weights=tmp_path / "w.pth")
    _ = text  # the text model's structure is checked through export above
