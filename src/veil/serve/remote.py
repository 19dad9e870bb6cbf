"""The client's side of a protected model's tail: what it may send, how the answer is put back together.

:class:`veil.client.VeilClient` built with ``transform=`` a loaded :func:`veil.protect` transform
(``veil.load``) uses :func:`protected_parts` to take the head and the noise from it — never rebuilt from
elsewhere, and refused if the head's fingerprint is not the one the transform recorded — and the transform's
wire and output specs for the Triton request (:func:`request`) and the reply (:func:`leaves`, then
:func:`veil.serve.spec.unflatten`). :func:`split_url` reads the server's URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from veil.errors import ServingError
from veil.serve.spec import ServedSpec, spec_from_meta

PROTOCOLS = ("http", "grpc")
TLS_SCHEMES = {"https": "http", "grpcs": "grpc"}


def split_url(url: str, protocol: str | None) -> tuple[str, str, bool]:
    """('host:port', protocol, tls) from 'host:port' or 'http(s)://host:port' or 'grpc(s)://host:port'."""
    scheme, sep, rest = url.partition("://")
    tls = False
    if sep:
        if scheme not in (*PROTOCOLS, *TLS_SCHEMES):
            raise ServingError(
                f"unsupported URL scheme {scheme!r} in {url!r}: use http://, https://, grpc:// or grpcs://"
            )
        tls = scheme in TLS_SCHEMES
        scheme = TLS_SCHEMES.get(scheme, scheme)
        if protocol is not None and protocol != scheme:
            raise ServingError(f"URL {url!r} says {scheme} but protocol={protocol!r}")
        protocol, url = scheme, rest
    protocol = protocol or "http"
    if protocol not in PROTOCOLS:
        raise ServingError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return url.rstrip("/"), protocol, tls


@dataclass
class Parts:
    """What a generic client runs locally and speaks on the wire."""

    spec: ServedSpec
    head: nn.Module
    noise: nn.Module
    meta: dict[str, Any]
    sigma_floor: float | None


def is_protected(obj: Any) -> bool:
    """A loaded :func:`veil.protect` transform (``veil.load``), not a FaceBoxes ``Transform``."""
    meta = _meta(obj)
    return meta is not None and "wire_spec" in meta and getattr(obj, "head", None) is not None


def _meta(obj: Any) -> dict[str, Any] | None:
    meta = getattr(obj, "meta", None)
    if meta is None and getattr(obj, "transform", None) is not None:
        meta = getattr(obj.transform, "meta", None)
    return meta if isinstance(meta, dict) else None


def protected_parts(transform: Any, pytorch_model: nn.Module | None = None) -> Parts:
    """Head, noise and specs of a protected transform: a loaded one, or a directory + ``pytorch_model``."""
    from veil.artifact import state_fingerprint
    from veil.noise import NoiseTransform

    if isinstance(transform, str | Path):
        if pytorch_model is None:
            raise ServingError(
                f"VeilClient(transform={str(transform)!r}) needs pytorch_model=... (the model it protects), "
                "or pass veil.load(dir, model)"
            )
        import veil

        transform = veil.load(transform, pytorch_model)
    meta = _meta(transform)
    if meta is None or "wire_spec" not in meta:
        raise ServingError("transform=... is not a protected model's transform (no wire_spec)")
    head, noise = getattr(transform, "head", None), getattr(transform, "noise", None)
    if not isinstance(head, nn.Module):
        raise ServingError("the transform carries no head to run locally")
    if not isinstance(noise, NoiseTransform):
        raise ServingError("the transform's noise is not a veil NoiseTransform: refusing to send")
    want = meta.get("head_sha256")
    if not want or state_fingerprint(head) != want:
        raise ServingError(
            "the transform's head is not the one it was made for (its fingerprint differs from the recorded "
            "head_sha256): load it again with veil.load(dir, model) from the model it protects"
        )
    floor = meta.get("sigma_floor")
    return Parts(spec_from_meta(meta), head, noise, meta, None if floor is None else float(floor))


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode (a Protected may still be training), restoring their modes after."""
    modes = [(m, m.training) for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


def request(protocol: str, spec: ServedSpec, x: np.ndarray) -> tuple[list[Any], list[Any]]:
    """(inputs, requested outputs) of one tritonclient request, binary tensors only."""
    if protocol == "http":
        import tritonclient.http as tc

        inp = tc.InferInput(spec.input.name, list(x.shape), spec.input.wire_type)
        inp.set_data_from_numpy(x, binary_data=True)
        return [inp], [tc.InferRequestedOutput(n, binary_data=True) for n in spec.output_names]
    import tritonclient.grpc as tg

    inp = tg.InferInput(spec.input.name, list(x.shape), spec.input.wire_type)
    inp.set_data_from_numpy(x)
    return [inp], [tg.InferRequestedOutput(n) for n in spec.output_names]


def leaves(result: Any, spec: ServedSpec, batch: int) -> list[np.ndarray]:
    """The reply's outputs in leaf order, each checked to hold ``batch`` rows."""
    out = []
    for o in spec.outputs:
        array = result.as_numpy(o.name)
        if array is None or array.ndim == 0 or array.shape[0] != batch:
            raise ServingError(
                f"the server's {o.name} is not a batch of {batch}: is it serving another model?"
            )
        out.append(array)
    return out
