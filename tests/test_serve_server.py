"""A real Triton server on loopback (both engines), the real tritonclient: results, privacy, robustness."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from serving import TOKEN, assert_same_boxes, assert_same_outputs, client
from veil.client import VeilClient
from veil.errors import ServingError
from veil.serve.server import free_ports
from veil.serve.validate import ACTIVATION_DIMS, BASE_MODEL, NOISY_MODEL

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", ["clean", "noisy"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_equals_local(
    server: Any, serve_parts: dict[str, Any], serve_images: list, protocol: str, path: str
) -> None:
    det = serve_parts[path]
    kw = {"noise": serve_parts["noise"]} if path == "noisy" else {}
    kw["allow_clean"] = True  # infer() below sends a given tensor
    c = client(server, protocol, head=det.head, **kw)
    assert c.model == (NOISY_MODEL if path == "noisy" else BASE_MODEL)
    assert_same_boxes(c.detect(serve_images), det.detect(serve_images))
    with torch.inference_mode():
        act = det.release(det.preprocess(serve_images))
        assert_same_outputs(c.infer(act), det.tail(act))


def test_tiled_detection_through_the_server(
    server: Any, serve_parts: dict[str, Any], serve_images: list
) -> None:
    """``--tiles``: the frames leave as one noisy batch, then all their crops; boxes match the local path."""
    from veil.faceboxes.tiles import TileGrid, tiled
    from veil.serve.validate import INPUT_SIZE

    grid = TileGrid(tiles=2)
    det = serve_parts["noisy"]
    c = client(server, "grpc", head=det.head, noise=serve_parts["noise"])
    server.recorder.take()
    remote = tiled(c.detect, grid, INPUT_SIZE)(serve_images[:2])
    assert_same_boxes(remote, tiled(det.detect, grid, det.size)(serve_images[:2]))
    seen = server.recorder.take()
    crops = 2 * (grid.requests - 1)
    # the python engine's record files carry no order; the client's last request shows the crops went second
    assert sorted((model, x.shape[0]) for model, x in seen) == [(NOISY_MODEL, 2), (NOISY_MODEL, crops)]
    assert c.last_sent is not None and c.last_sent.shape == (crops, *ACTIVATION_DIMS)


def test_batches_above_max_are_split(server: Any, serve_parts: dict[str, Any]) -> None:
    x = torch.randn(11, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(2)).relu()
    with torch.inference_mode():
        assert_same_outputs(client(server, "grpc", allow_clean=True).infer(x), serve_parts["clean"].tail(x))


def test_no_clean_activation_on_the_wire(
    server: Any, serve_parts: dict[str, Any], serve_images: list
) -> None:
    det, noise = serve_parts["clean"], serve_parts["noise"]
    with torch.inference_mode():
        clean = det.head(det.preprocess(serve_images).tensor).numpy()
    server.recorder.take()
    for protocol in ("http", "grpc"):
        c = client(server, protocol, head=det.head, noise=noise)
        c.detect(serve_images)
        assert c.last_sent is not None and not np.array_equal(c.last_sent, clean)
    seen = server.recorder.take()
    assert len(seen) == 2 and all(model == NOISY_MODEL for model, _ in seen)
    for _, x in seen:
        assert not np.isclose(x, clean, atol=1e-3).all(axis=(1, 2, 3)).any()
        np.testing.assert_allclose(x, clean + noise.sample[: len(clean)].numpy(), atol=1e-5)
    # without noise the client will not start; a do-nothing noise is caught before anything is sent
    with pytest.raises(ServingError, match="refusing"):
        client(server, "http", head=det.head)
    with pytest.raises(ServingError, match="must be a veil NoiseTransform"):
        client(server, "http", head=det.head, noise=nn.Identity())
    assert server.recorder.take() == []


def test_concurrent_requests_are_batched_and_correct(server: Any, serve_parts: dict[str, Any]) -> None:
    xs = torch.randn(8, 1, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(3))
    results: list[Any] = [None] * len(xs)

    def work(i: int) -> None:
        results[i] = client(server, "http", noise=serve_parts["noise"], allow_clean=True).infer(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.inference_mode():
        for x, got in zip(xs, results, strict=True):
            assert_same_outputs(got, serve_parts["noisy_tail"](x))


def test_statistics_need_the_token_and_metrics_are_served(server: Any) -> None:
    for protocol in ("http", "grpc"):
        with pytest.raises(ServingError, match="restricted"):
            client(server, protocol, allow_clean=True).statistics()
        stats = client(server, protocol, allow_clean=True, access_token=TOKEN).statistics()
        assert stats["model_stats"][0]["name"] == BASE_MODEL
    host, port = server.endpoints.metrics.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and b"nv_inference_request_success" in resp.read()


def test_clear_errors_when_down_or_not_ready(server: Any, serve_parts: dict[str, Any]) -> None:
    (port,) = free_ports(1)
    x = torch.zeros(1, *ACTIVATION_DIMS)
    for protocol in ("http", "grpc"):
        with pytest.raises(ServingError, match="unreachable"):
            VeilClient(f"127.0.0.1:{port}", protocol, allow_clean=True, timeout=3).infer(x)
        with pytest.raises(ServingError, match="not ready"):
            client(server, protocol, allow_clean=True, model="no_such_model").infer(x)


def test_cli_serve_prints_endpoints_and_stops_on_sigterm(weights: Path, tmp_path: Path) -> None:
    http_port, grpc_port, metrics_port = free_ports(3)
    ports = f"--http-port {http_port} --grpc-port {grpc_port} --metrics-port {metrics_port}".split()
    log = ["--triton-log", str(tmp_path / "triton.log")]
    veil = [sys.executable, "-c", "from veil.cli.main import main; main()"]
    cmd = [*veil, "serve", "--weights", str(weights), *ports, *log]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # the server must set it itself
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the endpoints, then the token line once both models are ready
            lines.append(line.rstrip())
            if line.startswith("access token"):
                break
        assert f"http: 127.0.0.1:{http_port}" in lines, lines
        assert f"grpc: 127.0.0.1:{grpc_port}" in lines
        assert f"metrics: 127.0.0.1:{metrics_port}/metrics" in lines
        with VeilClient(f"127.0.0.1:{http_port}", allow_clean=True, timeout=20) as c:
            loc, _ = c.infer(torch.zeros(1, *ACTIVATION_DIMS))
        assert loc.shape == (1, 21824, 4)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_cli_eval_through_server_matches_local(
    server: Any, weights: Path, fddb_sample: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from veil.cli.main import app

    out = tmp_path / "remote.json"
    base = ["eval", "--quiet", "--dataset", str(fddb_sample), "--weights", str(weights)]
    result = CliRunner().invoke(
        app, [*base, "--server", server.endpoints.http, "--allow-clean", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "FDDB-fold-6 Val AP" in result.output
    remote = json.loads(out.read_text())
    local = tmp_path / "local.json"
    assert CliRunner().invoke(app, [*base, "--json", str(local)]).exit_code == 0
    assert remote["pooled_ap"] == pytest.approx(json.loads(local.read_text())["pooled_ap"], abs=1e-6)
    refused = CliRunner().invoke(app, [*base, "--server", server.endpoints.http])
    assert refused.exit_code != 0 and "--allow-clean" in str(refused.exception)
