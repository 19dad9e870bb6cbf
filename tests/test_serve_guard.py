"""The server's input guard under fire: malformed KServe requests over HTTP and gRPC get clean 4xx."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from serving import ACT_BYTES, assert_same_outputs, client
from veil.serve.validate import ACTIVATION_DIMS, INPUT_NAME, NOISY_MODEL

pytestmark = pytest.mark.slow


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


def test_fuzz_http_malformed_requests_get_4xx(server: Any, serve_parts: dict[str, Any]) -> None:
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
        got = client(server, "http", noise=serve_parts["noise"], allow_clean=True).infer(x)
        assert_same_outputs(got, serve_parts["noisy_tail"](x))


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


def test_json_that_would_crash_triton_is_refused(server: Any, serve_parts: dict[str, Any]) -> None:
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
        loc, conf = serve_parts["noisy_tail"](torch.from_numpy(x[:1]))
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
