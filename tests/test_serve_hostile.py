"""Hostile clients against a real ``veil serve`` (issue 32): each test failed before the guards.

Nested JSON on every path that takes a body, batches of 0 / 2^32+1 / 2^62 interleaved with honest
requests on HTTP and gRPC at once, oversized gRPC messages, the record quota, what the server
publishes, and what a local user can see or reach.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serving import ACT_BYTES, TOKEN
from test_serve_guard import Http, _request
from veil.serve.checks import MAX_BODY_BYTES, parse_json, route
from veil.serve.validate import ACTIVATION_DIMS, INPUT_NAME, NOISY_MODEL

pytestmark = pytest.mark.slow

NESTED = b'{"INPUT__0":' + b"[" * 150_000 + b"]" * 150_000 + b"}"  # ~300 KB: overflowed Triton's stack
BODY_PATHS = [
    f"/v2/models/{NOISY_MODEL}/infer",
    f"/v2/models/{NOISY_MODEL}/versions/1/infer",
    f"/v2/models/{NOISY_MODEL}/generate",
    f"/v2/models/{NOISY_MODEL}/generate_stream",
    "/v2/repository/index",
    f"/v2/repository/models/{NOISY_MODEL}/load",
    "/v2/systemsharedmemory/region/r/register",
    "/v2/cudasharedmemory/region/r/register",
    "/v2/trace/setting",
    f"/v2/models/{NOISY_MODEL}/trace/setting",
    "/v2/logging",
]
BAD_BATCHES = (0, 2**32 + 1, 2**62)


def _grpc_input(batch: int, arr: np.ndarray) -> Any:
    """A ModelInfer input declaring ``batch`` but carrying ``arr``'s bytes (what an attacker sends)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=NOISY_MODEL)
    one = request.inputs.add()
    one.name, one.datatype = INPUT_NAME, "FP32"
    one.shape.extend([batch, *ACTIVATION_DIMS])
    request.raw_input_contents.append(arr.tobytes())
    return request


def _grpc_stub(server: Any) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(server.endpoints.grpc, options=options)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_checks_bound_json_and_route_paths() -> None:
    assert parse_json(NESTED)[0] == 400
    assert parse_json(b"[" * 17 + b"]" * 17)[0] == 400
    assert parse_json(b'{"inputs": [{"shape": [1, 2]}]}') == {"inputs": [{"shape": [1, 2]}]}
    assert route("POST", f"/v2/models/{NOISY_MODEL}/generate")[0] == 404
    assert route("GET", f"/v2/models/{NOISY_MODEL}/infer")[0] == 405
    assert route("GET", "/v2/models/stats") == "statistics"
    assert route("POST", f"/v2/models/{NOISY_MODEL}/infer?x=1") == "inference"


def test_nested_json_on_every_body_path_is_refused(
    server: Any, serve_parts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ``generate`` went unchecked (Triton died); ``/infer`` raised RecursionError in the guard."""
    conn = Http(server.endpoints.http)
    with caplog.at_level(logging.WARNING, logger="veil.serve.guard"):
        for path in BODY_PATHS:
            for body in (NESTED, b"[" * 40 + b"]" * 40):
                conn.conn.putrequest("POST", path)
                for k, v in (("Content-Length", str(len(body))), (TOKEN_HEADER, TOKEN)):
                    conn.conn.putheader(k, v)
                conn.conn.endheaders(body)
                resp = conn.conn.getresponse()
                reply = resp.read()
                assert 400 <= resp.status < 500 and b"error" in reply, (path, resp.status, reply[:200])
                assert b"\n" not in json.loads(reply)["error"].encode()
                conn.conn.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "veil.serve.guard"]
    assert len(lines) == 2 * len(BODY_PATHS) and all("refused" in ln for ln in lines)
    assert not any(r.exc_info for r in caplog.records)  # one line each, no traceback
    assert server.is_alive()
    _assert_serves(server, serve_parts)


TOKEN_HEADER = "triton-access-token"


def _assert_serves(server: Any, serve_parts: dict[str, Any]) -> None:
    """Both protocols still answer an honest request with the tail's numbers."""
    import tritonclient.grpc as tg

    x = np.random.default_rng(3).standard_normal((1, *ACTIVATION_DIMS)).astype(np.float32)
    with torch.inference_mode():
        want = serve_parts["noisy_tail"](torch.from_numpy(x))[0].numpy()
    body, hl = _request([1, *ACTIVATION_DIMS], data=x.tobytes())
    status, reply = Http(server.endpoints.http).post(f"/v2/models/{NOISY_MODEL}/infer", body, str(hl))
    assert status == 200, reply[:200]
    assert np.abs(_loc(reply) - want).max() < 1e-4
    c = tg.InferenceServerClient(server.endpoints.grpc)
    inp = tg.InferInput(INPUT_NAME, [1, *ACTIVATION_DIMS], "FP32")
    inp.set_data_from_numpy(x)
    assert np.abs(c.infer(NOISY_MODEL, [inp], client_timeout=30).as_numpy("OUTPUT__0") - want).max() < 1e-4
    c.close()


def _loc(reply: bytes) -> np.ndarray:
    """OUTPUT__0 of a KServe v2 JSON reply."""
    out = next(o for o in json.loads(reply)["outputs"] if o["name"] == "OUTPUT__0")
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_bad_batches_never_fail_good_requests(server: Any, serve_parts: dict[str, Any]) -> None:
    """Before: 72 % of honest requests failed with two attackers ("batch size 129 ... max allowed is 8")."""
    import grpc
    import tritonclient.grpc as tg

    one = np.zeros((1, *ACTIVATION_DIMS), np.float32)
    xs = np.random.default_rng(4).standard_normal((4, 1, *ACTIVATION_DIMS)).astype(np.float32)
    with torch.inference_mode():
        want = [serve_parts["noisy_tail"](torch.from_numpy(x))[0].numpy() for x in xs]
    stop_at = time.monotonic() + 8
    tally: dict[str, int] = {"good": 0, "good_failed": 0, "bad": 0, "bad_passed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def count(key: str, detail: str = "") -> None:
        with lock:
            tally[key] += 1
            if detail and len(errors) < 5:
                errors.append(detail)

    def good(protocol: str, k: int) -> None:
        c = tg.InferenceServerClient(server.endpoints.grpc) if protocol == "grpc" else None
        conn = Http(server.endpoints.http)
        while time.monotonic() < stop_at:
            x = xs[k % len(xs)]
            try:
                if c is not None:
                    inp = tg.InferInput(INPUT_NAME, list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    loc = c.infer(NOISY_MODEL, [inp], client_timeout=30).as_numpy("OUTPUT__0")
                else:
                    body, hl = _request(list(x.shape), data=x.tobytes())
                    status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", body, str(hl))
                    assert status == 200, reply[:200]
                    loc = _loc(reply)
                assert np.abs(loc.reshape(want[0].shape) - want[k % len(xs)]).max() < 1e-4
                count("good")
            except Exception as exc:
                count("good_failed", f"{protocol}: {str(exc)[:160]}")
            k += 1

    def bad(protocol: str) -> None:
        channel, stub = _grpc_stub(server)
        conn = Http(server.endpoints.http)
        i = 0
        while time.monotonic() < stop_at:
            batch = BAD_BATCHES[i % len(BAD_BATCHES)]
            i += 1
            if protocol == "grpc":
                try:
                    stub.ModelInfer(_grpc_input(batch, one), timeout=30)
                    count("bad_passed", f"grpc batch {batch} answered")
                except grpc.RpcError as exc:
                    ok = exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch size" in str(exc.details())
                    count("bad" if ok else "bad_passed", f"grpc batch {batch}: {exc.code()} {exc.details()}")
            else:
                body, hl = _request([batch, *ACTIVATION_DIMS], data=one.tobytes())
                status, reply = conn.post(f"/v2/models/{NOISY_MODEL}/infer", body, str(hl))
                count("bad" if status == 400 and b"batch size" in reply else "bad_passed", f"http {status}")
        channel.close()

    workers = [threading.Thread(target=good, args=(p, k)) for p in ("http", "grpc") for k in range(2)]
    workers += [threading.Thread(target=bad, args=(p,)) for p in ("http", "grpc")]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert tally["good_failed"] == 0 and tally["bad_passed"] == 0, (tally, errors)
    assert tally["good"] >= 8 and tally["bad"] >= 20, tally
    assert server.is_alive()


def test_oversized_grpc_message_is_refused_before_triton(server: Any, serve_parts: dict[str, Any]) -> None:
    """Before: a 256 MB message was read in full by Triton (RSS 55 -> 666 MB) before being refused."""
    import grpc

    channel, stub = _grpc_stub(server)
    huge = np.zeros((1, *ACTIVATION_DIMS), np.float32)
    request = _grpc_input(1, huge)
    request.raw_input_contents[0] = bytes(64 << 20)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert str(MAX_BODY_BYTES) in str(info.value.details()) or "larger than max" in str(info.value.details())
    streamed = stub.ModelStreamInfer(iter([_grpc_input(1, huge)]), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        next(streamed)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    assert server.is_alive()
    _assert_serves(server, serve_parts)


def test_grpc_restricted_protocols_need_the_token(server: Any) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    channel, stub = _grpc_stub(server)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(), timeout=10)
    assert "restricted" in str(info.value.details())
    stats = stub.ModelStatistics(
        service_pb2.ModelStatisticsRequest(), metadata=[(f"triton-grpc-protocol-{TOKEN_HEADER}", TOKEN)]
    )
    assert {m.name for m in stats.model_stats} >= {NOISY_MODEL}
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
    channel.close()


# -- a small server of its own: record quota, what is published, what a local user sees ----------------
@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from test_serve_python_backend import TinyTail
    from veil.serve.export import ScoresTail
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    folder = tmp_path_factory.mktemp("record-quota")
    h, g, m = free_ports(3)
    config = ServerConfig(
        http_port=h, grpc_port=g, metrics_port=m, access_token=TOKEN, instances=1,
        log_file=folder / "triton.log", record_dir=folder / "received", record_max_files=6,
    )  # fmt: skip
    torch.manual_seed(0)
    with VeilServer(
        {NOISY_MODEL: ScoresTail(TinyTail(0.0)), "face_detection_base": ScoresTail(TinyTail(1.0))}, config
    ) as srv:
        srv.folder = folder  # type: ignore[attr-defined]
        yield srv


def test_record_quota_stops_recording_with_one_log_line(recording: Any) -> None:
    """Before: no quota (231 MB in 10 s from one client). 6 files over 2 models = 3 per model here."""
    conn = Http(recording.endpoints.http)
    body, hl = _request([1, *ACTIVATION_DIMS])
    for _ in range(8):
        assert conn.post(f"/v2/models/{NOISY_MODEL}/infer", body, str(hl))[0] == 200  # serving goes on
    files = [f for f in (recording.folder / "received").glob("*.npy") if not f.name.startswith(".")]
    assert len(files) == 3 and all(f.stat().st_size <= ACT_BYTES + 128 for f in files)
    deadline = time.monotonic() + 10
    while "record quota reached" not in (
        log := (recording.folder / "triton.log").read_text(errors="replace")
    ):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.2)
    assert log.count("record quota reached") == 1


def test_nothing_local_is_published_or_exposed(recording: Any) -> None:
    """Before: the record path was in GET .../config, the token on Triton's command line, and Triton's
    HTTP on a loopback port anyone could reach past the guard."""
    host, port = recording.endpoints.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", f"/v2/models/{NOISY_MODEL}/config")
    resp = conn.getresponse()
    config = resp.read().decode()
    assert resp.status == 200 and "record" not in config and str(recording.folder) not in config
    pid = recording._triton.proc.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert not any(TOKEN in a for a in argv), argv
    http_addr = next(a for a in argv if a.startswith("--http-address="))
    grpc_addr = next(a for a in argv if a.startswith("--grpc-address="))
    assert http_addr.startswith("--http-address=unix:") and grpc_addr.startswith("--grpc-address=unix:")
    sockets = Path(http_addr.split("unix:", 1)[1]).parent
    assert sockets.stat().st_mode & 0o077 == 0 and sockets.parent.stat().st_mode & 0o077 == 0
    inodes = {
        Path(f"/proc/{pid}/fd/{fd}").readlink().name[len("socket:[") : -1]
        for fd in (p.name for p in Path(f"/proc/{pid}/fd").iterdir())
        if Path(f"/proc/{pid}/fd/{fd}").readlink().name.startswith("socket:[")
    }
    tcp_ports = set()
    for table in ("tcp", "tcp6"):
        for ln in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = ln.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN sockets Triton holds
                tcp_ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    assert tcp_ports == {int(recording.endpoints.metrics.rsplit(":", 1)[1])}, tcp_ports
