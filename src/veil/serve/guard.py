"""A small HTTP/1.1 front for Triton's HTTP endpoint: refuse what would crash or confuse Triton 2.51.

Triton 2.51 (the one in the nvidia-pytriton wheel) dies with SIGSEGV when a request's JSON part is
larger than about 4 MB (a JSON-encoded batch of two activations is 5.3 MB) — one such request from
any client would take the server down (upstream fixed this in later releases with
``--http-max-input-size``). It also answers a JSON header it cannot parse with a 500. The guard sits on
the public HTTP port, checks each request's framing and JSON part, answers the bad ones itself with a
4xx and a one-line reason, and relays the rest byte for byte to Triton on a private loopback port.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

from veil.errors import ServingError

#: The JSON part of a request (the whole body unless ``Inference-Header-Content-Length`` splits off
#: binary tensors). A JSON-encoded batch-1 activation is ~2.7 MB; Triton 2.51 crashes at ~4 MB.
MAX_JSON_BYTES = 3 << 20
#: A batch of 8 binary activations is 4 MiB; room for the JSON header on top.
MAX_BODY_BYTES = 8 << 20
MAX_HEAD_BYTES = 64 << 10
#: A client silent this long mid-request, or between requests, is disconnected (no slow-loris holds).
IDLE_TIMEOUT_S = 60.0
#: How long Triton may take to answer one request before the client gets a 504.
UPSTREAM_TIMEOUT_S = 300.0
_INFER_SUFFIX = "/infer"


@dataclass
class _Head:
    """A parsed request line and header block (names lower-cased)."""

    method: str
    path: str
    raw: bytes
    headers: dict[str, str]


def _reply(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed header line")
            headers[name.strip().lower()] = value.strip()
    return _Head(parts[0].upper(), parts[1], raw, headers)


def check_request(head: _Head, body: bytes) -> tuple[int, str, str] | None:
    """(status, reason, message) for a request the guard answers itself, or None to pass it on."""
    if head.headers.get("content-encoding", "identity").lower() != "identity":
        return 415, "Unsupported Media Type", "compressed requests are not accepted: send them uncompressed"
    if not head.path.split("?", 1)[0].endswith(_INFER_SUFFIX) or head.method != "POST":
        return None
    raw_len = head.headers.get("inference-header-content-length", str(len(body)))
    try:
        json_len = int(raw_len)
    except ValueError:
        return 400, "Bad Request", f"Inference-Header-Content-Length is not an integer: {raw_len[:40]!r}"
    if not 0 <= json_len <= len(body):
        return 400, "Bad Request", f"Inference-Header-Content-Length {json_len} outside the body"
    if json_len > MAX_JSON_BYTES:
        return (
            413,
            "Payload Too Large",
            f"JSON part of {json_len} bytes exceeds {MAX_JSON_BYTES}: send tensors as binary data "
            "(tritonclient: binary_data=True) or in smaller batches",
        )
    try:
        header = json.loads(body[:json_len])
    except (UnicodeDecodeError, ValueError) as exc:
        return 400, "Bad Request", f"request JSON does not parse: {str(exc)[:120]}"
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return 400, "Bad Request", 'request JSON must be an object with an "inputs" list'
    return None


def body_length(head: _Head) -> int | tuple[int, str, str]:
    """The announced body length, or why the request is refused before its body is read."""
    if "transfer-encoding" in head.headers:
        return 411, "Length Required", "chunked requests are not accepted: send a Content-Length"
    try:
        length = int(head.headers.get("content-length", "0"))
    except ValueError:
        return 400, "Bad Request", "Content-Length must be an integer"
    if not 0 <= length <= MAX_BODY_BYTES:
        return 413, "Payload Too Large", f"body of {length} bytes exceeds {MAX_BODY_BYTES}"
    return length


async def _relay_response(upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str) -> bool:
    """Copy one response; False when either side must close the connection afterwards."""
    raw = await upstream.readuntil(b"\r\n\r\n")
    writer.write(raw)
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (ln.partition(":") for ln in raw.decode("latin-1").split("\r\n")[1:] if ln)
    }
    keep = headers.get("connection", "").lower() != "close"
    if method == "HEAD":
        keep = False  # headers only; Triton 2.51 sends a body anyway, so this upstream link is spent
    elif "content-length" in headers:
        writer.write(await upstream.readexactly(int(headers["content-length"])))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await upstream.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            writer.write(size_line + await upstream.readexactly(size + 2))
            if size == 0:
                break
    elif not raw.split(b" ", 2)[1].startswith((b"1", b"204", b"304")):
        writer.write(await upstream.read())  # delimited by close
        keep = False
    await writer.drain()
    return keep


class HttpGuard:
    """Listen on ``host:port`` in a background thread; relay good requests to ``upstream_port``."""

    def __init__(self, host: str, port: int, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.host, self.port, self.upstream = host, port, (upstream_host, upstream_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader: asyncio.StreamReader | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                except asyncio.LimitOverrunError:
                    writer.write(_reply(431, "Request Header Fields Too Large", "request head too large"))
                    break
                try:
                    head = _parse_head(raw)
                except ValueError as exc:
                    writer.write(_reply(400, "Bad Request", str(exc)))
                    break
                length = body_length(head)
                if isinstance(length, tuple):
                    writer.write(_reply(*length))
                    break
                if head.headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered here, not relayed
                    lines = raw.split(b"\r\n")
                    raw = b"\r\n".join(ln for ln in lines if not ln.lower().startswith(b"expect:"))
                body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT_S)
                problem = check_request(head, body)
                if problem is not None:
                    writer.write(_reply(*problem))
                    break
                if up_writer is None or up_writer.is_closing():
                    try:
                        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                    except OSError:
                        writer.write(_reply(503, "Service Unavailable", "Triton is not reachable"))
                        break
                assert up_reader is not None
                up_writer.write(raw + body)
                await up_writer.drain()
                try:
                    relay = _relay_response(up_reader, writer, head.method)
                    if not await asyncio.wait_for(relay, UPSTREAM_TIMEOUT_S):
                        break
                except TimeoutError:
                    writer.write(_reply(504, "Gateway Timeout", "Triton did not answer in time"))
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a client or Triton hung up (or went silent) mid-message: nothing more to relay
        except asyncio.CancelledError:
            pass  # the guard is stopping: close this connection quietly
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()  # buffered bytes (a refusal) are still flushed

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD_BYTES)
        self._started.set()
        async with server:
            await server.serve_forever()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
        finally:  # let every connection handler finish its cancellation before the loop goes
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def start(self) -> HttpGuard:
        self._thread = threading.Thread(target=self._run, name="veil-http-guard", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None or not self._started.is_set():
            raise ServingError(f"cannot listen on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self) -> None:
        """Cancel the listener and every open connection, then wait for the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(_cancel_all, loop)
            thread.join(10)
        self._thread = None


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
