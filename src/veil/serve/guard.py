"""A small HTTP/1.1 front for Triton's HTTP endpoint: refuse what would crash or confuse Triton 2.51.

The guard sits on the public HTTP port and relays good requests byte for byte to Triton, which listens
on a Unix socket in a private (0700) folder (or a loopback port for the pytriton engine), so nothing
reaches Triton's HTTP without passing here. Per request it checks, before forwarding
(:mod:`veil.serve.checks` says why each matters): the path (only what veil serves; ``generate`` and
the like get 404), the access token on restricted APIs, the framing (no chunked or compressed bodies),
every body's JSON part (size and nesting depth: deep nesting kills Triton 2.51), and each input's
batch size (1..max: a batch of 0 or 2^62 would fail the good requests batched with it). A refused
request gets a 4xx with a one-line reason, and the server log one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from dataclasses import dataclass

from veil.errors import ServingError, brief
from veil.serve.checks import (
    MAX_BODY_BYTES,
    RESTRICTED,
    infer_json_problem,
    parse_json,
    restricted_message,
    route,
)
from veil.serve.validate import ACCESS_HEADER, MAX_BATCH_SIZE

MAX_HEAD_BYTES = 64 << 10
#: Stream buffer: a whole batch-1 request in few reads (the head is still bounded by MAX_HEAD_BYTES).
_BUFFER = 1 << 20
#: A client silent this long mid-request, or between requests, is disconnected (no slow-loris holds).
IDLE_TIMEOUT_S = 60.0
#: How long Triton may take to answer one request before the client gets a 504.
UPSTREAM_TIMEOUT_S = 300.0
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type"}  # fmt: skip
log = logging.getLogger("veil.serve.guard")


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
    if len(raw) > MAX_HEAD_BYTES:
        raise ValueError("request head too large")
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


def check_request(
    head: _Head, body: bytes, max_batch_size: int = MAX_BATCH_SIZE, token: str | None = None
) -> tuple[int, str, str] | None:
    """(status, reason, message) for a request the guard answers itself, or None to pass it on."""
    problem = _problem(head, body, max_batch_size, token)
    return None if problem is None else (problem[0], _REASONS.get(problem[0], "Error"), problem[1])


def _problem(head: _Head, body: bytes, max_batch_size: int, token: str | None) -> tuple[int, str] | None:
    if head.headers.get("content-encoding", "identity").lower() != "identity":
        return 415, "compressed requests are not accepted: send them uncompressed"
    api = route(head.method, head.path)
    if isinstance(api, tuple):
        return api
    if token is not None and api in RESTRICTED:
        given = head.headers.get(ACCESS_HEADER, "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            return 403, restricted_message(ACCESS_HEADER)
    if head.method != "POST":
        return None if not body else (400, f"{head.method} requests take no body")
    json_len = len(body)
    if api == "inference":
        raw_len = head.headers.get("inference-header-content-length", str(len(body)))
        try:
            json_len = int(raw_len)
        except ValueError:
            return 400, f"Inference-Header-Content-Length is not an integer: {raw_len[:40]!r}"
        if not 0 <= json_len <= len(body):
            return 400, f"Inference-Header-Content-Length {json_len} outside the body"
    elif not body:
        return None
    parsed = parse_json(body[:json_len])
    if isinstance(parsed, tuple):
        return parsed
    return infer_json_problem(parsed, max_batch_size) if api == "inference" else None


def body_length(head: _Head, limit: int = MAX_BODY_BYTES) -> int | tuple[int, str, str]:
    """The announced body length, or why the request is refused before its body is read."""
    if "transfer-encoding" in head.headers:
        return 411, "Length Required", "chunked requests are not accepted: send a Content-Length"
    try:
        length = int(head.headers.get("content-length", "0"))
    except ValueError:
        return 400, "Bad Request", "Content-Length must be an integer"
    if not 0 <= length <= limit:
        return (
            413,
            "Payload Too Large",
            f"body of {length} bytes exceeds {limit}: send smaller batches",
        )
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
    """Listen on ``host:port`` in a background thread; relay good requests to ``upstream``.

    ``upstream``: Triton's HTTP, a Unix socket path or a ``(host, port)`` pair. ``token``: the access
    token restricted APIs need (checked here; None leaves them open).
    """

    def __init__(
        self,
        host: str,
        port: int,
        upstream: str | tuple[str, int],
        *,
        max_batch_size: int = MAX_BATCH_SIZE,
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.max_batch_size, self.token, self.max_body_bytes = max_batch_size, token, max_body_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.upstream, str):
            return await asyncio.open_unix_connection(self.upstream, limit=_BUFFER)
        return await asyncio.open_connection(*self.upstream, limit=_BUFFER)

    def _refuse(
        self, writer: asyncio.StreamWriter, head: _Head | None, problem: tuple[int, str, str]
    ) -> None:
        """Answer with ``problem`` and log one line (never a traceback)."""
        peer = writer.get_extra_info("peername")
        where = f"{head.method} {head.path.split('?', 1)[0][:80]}" if head is not None else "request"
        log.warning("veil guard: refused %s from %s: %d %s", where, peer, problem[0], problem[2])
        writer.write(_reply(*problem))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader: asyncio.StreamReader | None = None
        up_writer: asyncio.StreamWriter | None = None
        head: _Head | None = None
        try:
            while True:
                head = None
                try:
                    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                    head = _parse_head(raw)
                except asyncio.LimitOverrunError:
                    self._refuse(
                        writer, None, (431, "Request Header Fields Too Large", "request head too large")
                    )
                    break
                except ValueError as exc:
                    status = 431 if "too large" in str(exc) else 400
                    self._refuse(
                        writer,
                        None,
                        (status, _REASONS.get(status, "Request Header Fields Too Large"), str(exc)),
                    )
                    break
                length = body_length(head, self.max_body_bytes)
                if isinstance(length, tuple):
                    self._refuse(writer, head, length)
                    break
                if head.headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered here, not relayed
                    lines = raw.split(b"\r\n")
                    raw = b"\r\n".join(ln for ln in lines if not ln.lower().startswith(b"expect:"))
                body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT_S)
                problem = check_request(head, body, self.max_batch_size, self.token)
                if problem is not None:
                    self._refuse(writer, head, problem)
                    break
                if up_writer is None or up_writer.is_closing():
                    try:
                        up_reader, up_writer = await self._connect()
                    except OSError:
                        writer.write(_reply(503, "Service Unavailable", "Triton is not reachable"))
                        break
                assert up_reader is not None
                up_writer.writelines((raw, body))
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
        except Exception as exc:  # one line, never a traceback per request; this connection only
            log.warning("veil guard: dropped a connection: %s: %s", type(exc).__name__, brief(exc, 200))
            writer.write(_reply(500, "Internal Server Error", "the guard could not handle this request"))
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()  # buffered bytes (a refusal) are still flushed

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, self.host, self.port, limit=_BUFFER)
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
