"""A real Triton server on loopback (both engines), the real tritonclient: results, privacy, robustness."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from veil.client import VeilClient
from veil.detect import Detector, build_detector
from veil.errors import ServingError
from veil.imageio import load_image
from veil.serve.export import noisy_tail_from_state_dict
from veil.serve.server import free_ports
from veil.serve.validate import ACTIVATION_DIMS, BASE_MODEL, INPUT_NAME, NOISY_MODEL

pytestmark = pytest.mark.slow
TOKEN = "test-token-0123456789"
ACT_BYTES = int(np.prod(ACTIVATION_DIMS)) * 4


class FixedNoise(nn.Module):
    """Adds one pre-sampled tensor: local and remote paths see exactly the same noise."""

    def __init__(self, sample: torch.Tensor) -> None:
        super().__init__()
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


@pytest.fixture(scope="session")
def images(fddb_sample: Path) -> list[torch.Tensor]:
    paths = sorted(fddb_sample.rglob("*.jpg"))[:3]
    return [load_image(p) for p in paths]


@pytest.fixture(scope="session")
def parts(weights: Path) -> dict[str, Any]:
    """Local reference: clean detector, a distinct noise-trained tail, and one fixed noise sample."""
    clean = build_detector(weights)
    base_tail = cast(nn.Module, clean.tail)
    state = {k: v.clone() for k, v in base_tail.state_dict().items()}
    for k in state:
        if k.endswith("bias") and "conf" in k:
            state[k] = (state[k].view(-1, 2) + torch.tensor([0.3, -0.3])).view(-1)  # routing is visible
    noisy_tail = noisy_tail_from_state_dict(base_tail, state)
    noise = FixedNoise(torch.randn(8, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(1)) * 0.5)
    noisy = Detector(clean.head, noisy_tail, noise=noise)
    return {"clean": clean, "noisy": noisy, "noise": noise, "noisy_tail": noisy_tail}


@pytest.fixture(scope="session", params=["python", "pytriton"])
def server(
    request: pytest.FixtureRequest, parts: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The server on free loopback ports, with a record of what reached the tails, per engine."""
    from veil.serve.server import ServerConfig, VeilServer

    engine = request.param
    folder = tmp_path_factory.mktemp(f"triton-{engine}")
    http_port, grpc_port, metrics_port = free_ports(3)
    config = ServerConfig(
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        access_token=TOKEN,
        log_file=folder / "triton.log",
        engine=engine,
        record_dir=folder / "received" if engine == "python" else None,
    )
    recorder: Recorder | DirRecorder
    if engine == "pytriton":
        recorder = Recorder()
        srv = VeilServer.from_tails(parts["clean"].tail, parts["noisy_tail"], config, on_request=recorder)
    else:
        recorder = DirRecorder(folder / "received")
        srv = VeilServer.from_tails(parts["clean"].tail, parts["noisy_tail"], config)
    srv.recorder = recorder  # type: ignore[attr-defined]
    with srv:
        yield srv


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


@pytest.mark.parametrize("path", ["clean", "noisy"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_equals_local(
    server: Any, parts: dict[str, Any], images: list, protocol: str, path: str
) -> None:
    det = parts[path]
    kw = {"noise": parts["noise"]} if path == "noisy" else {"allow_clean": True}
    c = client(server, protocol, head=det.head, **kw)
    assert c.model == (NOISY_MODEL if path == "noisy" else BASE_MODEL)
    assert_same_boxes(c.detect(images), det.detect(images))
    with torch.inference_mode():
        act = det.release(det.preprocess(images))
        assert_same_outputs(c.infer(act), det.tail(act))


def test_batches_above_max_are_split(server: Any, parts: dict[str, Any]) -> None:
    x = torch.randn(11, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(2)).relu()
    with torch.inference_mode():
        assert_same_outputs(client(server, "grpc", allow_clean=True).infer(x), parts["clean"].tail(x))


def test_no_clean_activation_on_the_wire(server: Any, parts: dict[str, Any], images: list) -> None:
    det, noise = parts["clean"], parts["noise"]
    with torch.inference_mode():
        clean = det.head(det.preprocess(images).tensor).numpy()
    server.recorder.take()
    for protocol in ("http", "grpc"):
        c = client(server, protocol, head=det.head, noise=noise)
        c.detect(images)
        assert c.last_sent is not None and not np.array_equal(c.last_sent, clean)
    seen = server.recorder.take()
    assert len(seen) == 2 and all(model == NOISY_MODEL for model, _ in seen)
    for _, x in seen:
        assert not np.isclose(x, clean, atol=1e-3).all(axis=(1, 2, 3)).any()
        np.testing.assert_allclose(x, clean + noise.sample[: len(clean)].numpy(), atol=1e-5)
    # without noise the client will not start; a do-nothing noise is caught before anything is sent
    with pytest.raises(ServingError, match="refusing"):
        client(server, "http", head=det.head)
    c = client(server, "http", head=det.head, noise=nn.Identity())
    with pytest.raises(ServingError, match="unchanged"):
        c.detect(images)
    assert c.last_sent is None and server.recorder.take() == []


def _request(shape: list[int], dtype: str = "FP32", name: str = INPUT_NAME, data: bytes | None = None,
             size: int | None = None, extra: dict | None = None) -> tuple[bytes, int]:  # fmt: skip
    """A KServe v2 binary request: JSON header + raw tensor bytes -> (body, header length)."""
    data = bytes(int(np.prod(shape)) * 4) if data is None else data
    one: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
    one["parameters"] = {"binary_data_size": len(data) if size is None else size}
    raw = json.dumps({"inputs": [one], **(extra or {})}).encode()
    return raw + data, len(raw)


ONE = [1, *ACTIVATION_DIMS]
DTYPE_BYTES = {"FP16": 2, "FP64": 8, "INT8": 1, "UINT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "BF16": 2}


def _bad_shape(rng: np.random.Generator) -> tuple[bytes, int]:
    shape = [int(d) for d in rng.integers(0, 40, size=int(rng.integers(0, 7)))]
    if shape[1:] == list(ACTIVATION_DIMS):
        shape[-1] += 1
    return _request(shape, data=bytes(min(int(np.prod(shape)) if shape else 1, 1 << 20) * 4))


def _non_finite(rng: np.random.Generator) -> tuple[bytes, int]:
    arr = np.zeros((int(rng.integers(1, 3)), *ACTIVATION_DIMS), np.float32)
    arr.reshape(-1)[rng.integers(0, arr.size, size=3)] = rng.choice([np.nan, np.inf, -np.inf])
    return _request(list(arr.shape), data=arr.tobytes())


def _truncated(rng: np.random.Generator) -> tuple[bytes, int]:
    body, hl = _request(ONE)
    return body[: int(rng.integers(hl, len(body)))], hl


def _oversized(rng: np.random.Generator) -> tuple[bytes, int]:
    return [
        lambda: _request(ONE, data=bytes(ACT_BYTES + int(rng.integers(1, 4096)))),  # trailing bytes
        lambda: _request(ONE, size=int(rng.integers(ACT_BYTES + 1, 1 << 40))),  # declares more than sent
        lambda: _request([int(rng.integers(9, 12)), *ACTIVATION_DIMS]),  # batch above max_batch_size
    ][int(rng.integers(0, 3))]()


def _misc(rng: np.random.Generator) -> tuple[bytes, int]:
    one = {"name": INPUT_NAME, "datatype": "FP32", "shape": ONE}
    no_data = json.dumps({"inputs": [one]}).encode()  # neither data nor a binary size
    twice = json.dumps({"inputs": [{**one, "parameters": {"binary_data_size": ACT_BYTES}}] * 2}).encode()
    return [
        lambda: _request(ONE, extra={"outputs": [{"name": "OUTPUT__9"}]}),  # unknown output
        lambda: (no_data, len(no_data)),
        lambda: (twice + bytes(2 * ACT_BYTES), len(twice)),  # the same input twice
    ][int(rng.integers(0, 3))]()


def _bad_name(rng: np.random.Generator) -> tuple[bytes, int]:
    name = "".join(rng.choice(list("abcINPUT_019xyz-. "), int(rng.integers(0, 12))))
    return _request(ONE, name=name if name != INPUT_NAME else "")


def _bad_dtype(rng: np.random.Generator) -> tuple[bytes, int]:
    dtype = str(rng.choice(list(DTYPE_BYTES)))
    return _request(ONE, dtype=dtype, data=bytes(ACT_BYTES // 4 * DTYPE_BYTES[dtype]))


MALFORMED: dict[str, Any] = {
    "name": _bad_name,
    "dtype": _bad_dtype,
    "shape": _bad_shape,
    "nan": _non_finite,
    "truncated": _truncated,
    "oversized": _oversized,
    "header-length": lambda rng: (_request(ONE)[0], int(rng.choice([ACT_BYTES * 2, -3, 10**9]))),
    "misc": _misc,
}  # fmt: skip


def malformed_requests(rng: np.random.Generator, n: int) -> Iterator[tuple[str, str, bytes, str]]:
    """(kind, path, body, Inference-Header-Content-Length) for n malformed requests, kinds in turn."""
    kinds = list(MALFORMED)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        body, hl = MALFORMED[kind](rng)
        model = "no_such_model" if i % 97 == 0 else NOISY_MODEL
        yield kind, f"/v2/models/{model}/infer", body, str(hl)


class Http:
    """One persistent HTTP/1.1 connection, reopened if the server closes it."""

    def __init__(self, hostport: str) -> None:
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, body: bytes, header_length: str | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/octet-stream"}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = header_length
        for attempt in range(2):
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def test_fuzz_http_malformed_requests_get_4xx(server: Any, parts: dict[str, Any]) -> None:
    rng = np.random.default_rng(1234)
    conn = Http(server.endpoints.http)
    server.recorder.take()
    failures, kinds = [], set()
    for kind, path, body, hl in malformed_requests(rng, 1200):
        status, reply = conn.post(path, body, hl)
        kinds.add(kind)
        if not 400 <= status < 500 or b"error" not in reply:
            failures.append((kind, status, reply[:200]))
    assert not failures, failures[:5]
    assert len(kinds) == 8
    assert server.recorder.take() == []  # nothing malformed ever reached a tail
    assert server.is_alive()
    # a good request still succeeds, on the same connection and through the client
    good, good_hl = _request([1, *ACTIVATION_DIMS])
    assert conn.post(f"/v2/models/{NOISY_MODEL}/infer", good, str(good_hl))[0] == 200
    x = torch.zeros(1, *ACTIVATION_DIMS)
    with torch.inference_mode():
        assert_same_outputs(client(server, "http", noise=parts["noise"]).infer(x), parts["noisy_tail"](x))


def test_unparsable_json_gets_400(server: Any) -> None:
    """The guard parses the JSON part itself (Triton 2.51 would answer 500)."""
    conn = Http(server.endpoints.http)
    for body in (b"", b"{", b"\xff" * 64, b'{"inputs": 5}', b"[]"):
        status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", body, None)
        assert status == 400 and b"error" in reply, (body, status, reply)
    good, hl = _request([1, *ACTIVATION_DIMS])
    assert conn.post(f"/v2/models/{NOISY_MODEL}/infer", good, str(hl))[0] == 200


def _json_request(x: np.ndarray) -> bytes:
    """A KServe v2 request with the tensor written out as JSON numbers (no binary part)."""
    one = {"name": INPUT_NAME, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [one]}).encode()


def test_json_that_would_crash_triton_is_refused(server: Any, parts: dict[str, Any]) -> None:
    """Triton 2.51 segfaults on a JSON part over ~4 MB (a JSON batch of 2 is 5.3 MB); the guard says 413."""
    conn = Http(server.endpoints.http)
    x = np.random.default_rng(5).standard_normal((2, *ACTIVATION_DIMS)).astype(np.float32)
    status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", _json_request(x), None)
    assert status == 413 and b"binary" in reply, reply[:200]
    padded, hl = _request([1, *ACTIVATION_DIMS])  # a binary request whose JSON header is padded to 4.5 MB
    padded = padded[: hl - 1] + b" " * (4_500_000) + padded[hl - 1 :]
    status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", padded, str(hl + 4_500_000))
    assert status == 413, reply[:200]
    assert server.is_alive()
    # a JSON batch of one is fine, and it is still the tail's answer
    status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", _json_request(x[:1]), None)
    assert status == 200, reply[:200]
    out = {
        o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(reply)["outputs"]
    }
    with torch.inference_mode():
        loc, conf = parts["noisy_tail"](torch.from_numpy(x[:1]))
    assert np.abs(out["OUTPUT__0"] - loc.numpy()).max() < 1e-4
    assert np.abs(out["OUTPUT__1"] - torch.softmax(conf, -1).numpy()).max() < 1e-4


def _raw_exchange(hostport: str, data: bytes, then: bytes = b"") -> list[bytes]:
    """Send ``data`` on a fresh socket, read one reply, optionally send ``then`` and read again."""
    import socket

    host, port = hostport.rsplit(":", 1)
    replies = []
    with socket.create_connection((host, int(port)), timeout=30) as s:
        for chunk in (data, then) if then else (data,):
            s.sendall(chunk)
            replies.append(s.recv(1 << 20))
    return replies


def test_http_framing_the_guard_answers(server: Any) -> None:
    body, hl = _request([1, *ACTIVATION_DIMS])
    path = f"/v2/models/{NOISY_MODEL}/infer"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: {hl}\r\n"
    # curl's Expect: 100-continue for large bodies: answered by the guard, then the body goes through
    first, second = _raw_exchange(
        server.endpoints.http,
        (head + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode(),
        body,
    )
    assert first.startswith(b"HTTP/1.1 100") and second.startswith(b"HTTP/1.1 200")
    chunked = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"0\r\n\r\n"
    assert _raw_exchange(server.endpoints.http, chunked)[0].startswith(b"HTTP/1.1 411")
    gz = (head + f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    assert _raw_exchange(server.endpoints.http, gz)[0].startswith(b"HTTP/1.1 415")
    huge = (head + "Content-Length: 999999999\r\n\r\n").encode()
    assert _raw_exchange(server.endpoints.http, huge)[0].startswith(b"HTTP/1.1 413")
    assert _raw_exchange(server.endpoints.http, b"GARBAGE\r\n\r\n")[0].startswith(b"HTTP/1.1 400")
    # HEAD: headers only, relayed without waiting for a body that never comes
    head_reply = _raw_exchange(server.endpoints.http, b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head_reply[0].startswith(b"HTTP/1.1 ") and head_reply[0].endswith(b"\r\n\r\n")
    assert server.is_alive()


def test_grpc_malformed_requests_get_invalid_argument(server: Any) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(server.endpoints.grpc)
    rng = np.random.default_rng(7)
    cases: list[tuple[str, np.ndarray, str]] = []
    for _ in range(10):
        bad = np.zeros((1, *ACTIVATION_DIMS), np.float32)
        bad.reshape(-1)[rng.integers(0, bad.size)] = rng.choice([np.nan, np.inf, -np.inf])
        cases.append((INPUT_NAME, bad, "FP32"))
    cases += [("WRONG", np.zeros((1, *ACTIVATION_DIMS), np.float32), "FP32")] * 5
    cases += [(INPUT_NAME, np.zeros((1, *ACTIVATION_DIMS), np.float16), "FP16")] * 5
    cases += [(INPUT_NAME, np.zeros((1, 128, 32, 31), np.float32), "FP32")] * 5
    cases += [(INPUT_NAME, np.zeros((9, *ACTIVATION_DIMS), np.float32), "FP32")] * 2
    for name, arr, dtype in cases:
        inp = tg.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException) as info:
            c.infer(NOISY_MODEL, [inp], client_timeout=20)
        assert "INVALID_ARGUMENT" in str(info.value.status()), info.value
    ok = tg.InferInput(INPUT_NAME, [1, *ACTIVATION_DIMS], "FP32")
    ok.set_data_from_numpy(np.zeros((1, *ACTIVATION_DIMS), np.float32))
    assert c.infer(NOISY_MODEL, [ok], client_timeout=20).as_numpy("OUTPUT__1").shape == (1, 21824, 2)
    c.close()


def test_concurrent_requests_are_batched_and_correct(server: Any, parts: dict[str, Any]) -> None:
    xs = torch.randn(8, 1, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(3))
    results: list[Any] = [None] * len(xs)

    def work(i: int) -> None:
        results[i] = client(server, "http", noise=parts["noise"]).infer(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.inference_mode():
        for x, got in zip(xs, results, strict=True):
            assert_same_outputs(got, parts["noisy_tail"](x))


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


def test_clear_errors_when_down_or_not_ready(server: Any, parts: dict[str, Any]) -> None:
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
