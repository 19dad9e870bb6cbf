"""What the HTTP and gRPC guards refuse before a request reaches Triton 2.51 (no I/O here).

Found by attacking the wheel's Triton (issue 32):

* **Deeply nested JSON kills it.** Triton parses JSON bodies with a recursive parser: about 300 KB of
  ``[[[[...]]]]`` (150,000 levels) overflows its stack and tritonserver dies with SIGSEGV — on any path
  that takes a body, ``/infer`` or ``/generate`` alike. Every body the HTTP guard forwards is parsed
  here first, with a bounded size and nesting depth; paths veil does not serve are refused.
* **A batch of 0 (or 2^32·k, or 2^62) poisons the dynamic batcher.** Triton keeps the batch size as a
  32-bit number: such a request passes the frontend's checks with the bytes of one sample, the
  batcher merges it with honest requests, and the Python backend then refuses the *whole* merged batch
  ("batch size 129 ... max allowed is 8") before ``execute`` runs. Both guards check
  ``1 <= shape[0] <= max_batch_size`` for every input, so such a request is answered on its own.
* **gRPC had no message limit** (2 GB): the gRPC guard bounds messages to a full batch plus headroom.
* JSON parts of 5–21.6 MB sent straight to Triton 2.51 are answered 200 (re-measured): size alone does
  not crash it; the limit below only keeps the guard's own parse cheap.
"""

from __future__ import annotations

import json
import re
from typing import Any

from veil.errors import brief

#: The JSON part of a request (the whole body unless ``Inference-Header-Content-Length`` splits off
#: binary tensors). A JSON-encoded batch-1 activation is ~2.7 MB; binary requests need a few hundred
#: bytes. Bounds the guard's own parse (Triton itself accepted 21.6 MB).
MAX_JSON_BYTES = 3 << 20
#: Nesting depth of a request's JSON part. KServe v2 requests need 4 (``{"inputs": [{"shape": [...]}]}``)
#: and the restricted endpoints' bodies about as much.
MAX_JSON_DEPTH = 16
#: A batch of 8 binary activations is 4 MiB; room for the JSON header on top (HTTP body, gRPC message).
MAX_BODY_BYTES = 8 << 20
#: Restricted APIs (PyTriton 0.7's defaults): they need the ``triton-access-token`` header.
RESTRICTED = ("shared-memory", "model-repository", "statistics", "trace", "logging")

Problem = tuple[int, str]  # (HTTP status, one-line message)

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_SHM = r"/v2/(?:system|cuda)sharedmemory(?:/region/[^/]+)?/(?:status|register|unregister)"
_ROUTES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (api, methods, re.compile(pattern))
    for api, methods, pattern in (
        ("inference", "POST", _MODEL + "/infer"),
        ("statistics", "GET", r"/v2/models(?:/[^/]+(?:/versions/[^/]+)?)?/stats"),
        ("health", "GET", r"/v2/health/(?:live|ready)|" + _MODEL + "/ready"),
        ("metadata", "GET", r"/v2|" + _MODEL),
        ("model-config", "GET", _MODEL + "/config"),
        ("model-repository", "POST", r"/v2/repository/(?:index|models/[^/]+/(?:load|unload))"),
        ("shared-memory", "GET POST", _SHM),
        ("trace", "GET POST", r"/v2/trace/setting|" + _MODEL + r"/trace/setting"),
        ("logging", "GET POST", r"/v2/logging"),
    )
)  # fmt: skip


def route(method: str, path: str) -> str | Problem:
    """The API a request belongs to, or why it is refused (paths veil does not serve, e.g. generate)."""
    clean = path.split("?", 1)[0].rstrip("/") or "/"
    for api, methods, pattern in _ROUTES:
        if pattern.fullmatch(clean):
            if method not in methods.split() and not (method == "HEAD" and "GET" in methods):
                return 405, f"{method} {clean} is not allowed: use {methods.replace(' ', ' or ')}"
            return api
    return 404, f"{clean[:80]} is not served here (veil serves /v2 health, metadata, config and infer)"


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping once past ``limit``."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def parse_json(raw: bytes) -> Any | Problem:
    """Parse a JSON part within :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`, or say why not.

    Returns the parsed value; a refusal is a ``(status, message)`` tuple (JSON never parses to one).
    """
    if len(raw) > MAX_JSON_BYTES:
        return 413, (
            f"JSON part of {len(raw)} bytes exceeds {MAX_JSON_BYTES}: send tensors as binary data "
            "(tritonclient: binary_data=True) or in smaller batches"
        )
    try:
        value = json.loads(raw)
    except RecursionError:
        return 400, f"request JSON nested deeper than {MAX_JSON_DEPTH} levels"
    except (UnicodeDecodeError, ValueError) as exc:
        return 400, f"request JSON does not parse: {brief(exc, 120)}"
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return 400, f"request JSON nested deeper than {MAX_JSON_DEPTH} levels"
    return value


def batch_problem(shapes: list[Any], max_batch_size: int) -> str | None:
    """Why a request's input shapes are refused (first dimension outside 1..max), or None."""
    for shape in shapes:
        if not isinstance(shape, list | tuple) or not shape or not all(type(d) is int for d in shape):
            return f"input shape must be a non-empty list of integers, got {str(shape)[:60]}"
        if not 1 <= shape[0] <= max_batch_size:
            hint = ": split larger batches" if shape[0] > max_batch_size else ""
            return f"batch size must be 1..{max_batch_size}, got {shape[0]}{hint}"
    return None


def infer_json_problem(header: Any, max_batch_size: int) -> Problem | None:
    """Why a parsed KServe v2 inference header is refused, or None to pass it on."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return 400, 'request JSON must be an object with an "inputs" list'
    if not all(isinstance(i, dict) for i in header["inputs"]):
        return 400, 'every entry of "inputs" must be an object'
    problem = batch_problem([i.get("shape") for i in header["inputs"]], max_batch_size)
    return None if problem is None else (400, problem)


#: gRPC methods of ``inference.GRPCInferenceService`` -> the API (Triton's protocol group) they belong to.
GRPC_APIS: dict[str, str] = {
    **dict.fromkeys(("ServerLive", "ServerReady", "ModelReady"), "health"),
    **dict.fromkeys(("ServerMetadata", "ModelMetadata"), "metadata"),
    "ModelInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    **dict.fromkeys(("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"), "model-repository"),
    **{
        f"{kind}SharedMemory{verb}": "shared-memory"
        for kind in ("System", "Cuda")
        for verb in ("Status", "Register", "Unregister")
    },
    "TraceSetting": "trace",
    "LogSettings": "logging",
}  # ModelStreamInfer is not served: veil's client does not stream


def restricted_message(header: str) -> str:
    """Triton's own wording (``VeilClient`` recognises it)."""
    return f"This API is restricted, expecting header '{header}'"
