"""A gRPC front for Triton's gRPC endpoint: the same refusals as the HTTP guard, for KServe v2 gRPC.

Triton 2.51 has no gRPC message limit (a 256 MB message was read in full before being refused) and
lets a request with a batch of 0 or 2^62 into the dynamic batcher, where it fails every good request
merged with it (:mod:`veil.serve.checks`). This front listens on the public gRPC port, bounds every
message to :data:`~veil.serve.checks.MAX_BODY_BYTES`, checks the access token on restricted
protocols and each ``ModelInfer`` input's batch size, and relays the raw message bytes (no re-encoding)
to Triton on a Unix socket in a private folder. ``ModelStreamInfer`` is not served (veil does not
stream): UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from veil.errors import ServingError, brief
from veil.serve.checks import GRPC_APIS, MAX_BODY_BYTES, RESTRICTED, batch_problem, restricted_message
from veil.serve.validate import ACCESS_HEADER, MAX_BATCH_SIZE

SERVICE = "inference.GRPCInferenceService"
#: Triton's gRPC name for the access-token header (tritonclient/PyTriton send it so).
GRPC_ACCESS_HEADER = f"triton-grpc-protocol-{ACCESS_HEADER}"
#: Concurrent calls being relayed; more wait in gRPC's queue (each holds one worker while Triton works).
WORKERS = 32
#: How long Triton may take to answer one call (as the HTTP guard's UPSTREAM_TIMEOUT_S).
UPSTREAM_TIMEOUT_S = 300.0
log = logging.getLogger("veil.serve.grpc_guard")


class GrpcGuard:
    """Listen on ``host:port``; relay good calls to ``upstream`` (a gRPC target, e.g. ``unix:/path``)."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream: str,
        *,
        max_batch_size: int = MAX_BATCH_SIZE,
        token: str | None = None,
        max_message_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.max_batch_size, self.token, self.max_message_bytes = max_batch_size, token, max_message_bytes
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None

    def _handler(self, method: str, call: Callable[..., bytes]) -> Callable[[bytes, Any], bytes]:
        api = GRPC_APIS[method]

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = tuple((k, v) for k, v in context.invocation_metadata() if not k.startswith("grpc-"))
            if self.token is not None and api in RESTRICTED:
                given = next((str(v) for k, v in metadata if k in (GRPC_ACCESS_HEADER, ACCESS_HEADER)), "")
                if not secrets.compare_digest(given.encode(), self.token.encode()):
                    self._refuse(
                        context,
                        method,
                        grpc.StatusCode.PERMISSION_DENIED,
                        restricted_message(GRPC_ACCESS_HEADER),
                    )
            if method == "ModelInfer":
                problem = self._infer_problem(request)
                if problem is not None:
                    self._refuse(context, method, grpc.StatusCode.INVALID_ARGUMENT, problem)
            remaining = context.time_remaining()  # no client deadline: a huge number
            timeout = UPSTREAM_TIMEOUT_S if remaining is None else min(remaining, UPSTREAM_TIMEOUT_S)
            try:
                return call(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as exc:  # Triton's own answer (an error status), passed on as is
                context.abort(exc.code(), exc.details() or "")
                raise  # unreachable: abort raises

        return handle

    def _infer_problem(self, request: bytes) -> str | None:
        try:
            parsed = service_pb2.ModelInferRequest.FromString(request)
        except Exception as exc:  # protobuf's DecodeError
            return f"ModelInferRequest does not parse: {brief(exc, 80)}"
        return batch_problem([list(i.shape) for i in parsed.inputs], self.max_batch_size)

    def _refuse(
        self, context: grpc.ServicerContext, method: str, code: grpc.StatusCode, message: str
    ) -> None:
        log.warning("veil grpc guard: refused %s from %s: %s %s", method, context.peer(), code.name, message)
        context.abort(code, message)

    def start(self) -> GrpcGuard:
        self._channel = grpc.insecure_channel(
            self.upstream,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                self._handler(method, self._channel.unary_unary(f"/{SERVICE}/{method}"))
            )
            for method in GRPC_APIS
        }
        self._server = grpc.server(
            ThreadPoolExecutor(WORKERS, thread_name_prefix="veil-grpc-guard"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=4 * WORKERS,
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound != self.port:
            self.stop()
            raise ServingError(f"cannot listen on {self.host}:{self.port} (gRPC): choose another port")
        self._server.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=2).wait(5)
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
