"""The trusted side of remote inference: image -> head -> noise locally, only ``INPUT__0`` on the wire.

:class:`VeilClient` talks to Triton (``veil serve`` or any Triton serving an exported repository) with
``tritonclient`` over HTTP or gRPC, binary tensors only. It refuses to put a clean activation on the
wire unless built with ``allow_clean=True``: without a noise module it will not even start, and a noise
module that leaves the activation unchanged is caught before sending. ``last_sent`` holds a copy of
exactly what the last request carried, so tests (and the curious) can check what left the machine.

One client per thread: tritonclient's connections are not meant to be shared across threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.detect import PostProcess
from veil.errors import ServingError
from veil.imageio import FACEBOXES_MEAN_BGR, Batch, preprocess
from veil.serve.export import scores_to_logits
from veil.serve.validate import (
    ACCESS_HEADER,
    BASE_MODEL,
    INPUT_NAME,
    INPUT_SIZE,
    LOC_NAME,
    MAX_BATCH_SIZE,
    NOISY_MODEL,
    SCORES_NAME,
    check_activation,
)

PROTOCOLS = ("http", "grpc")


def _split_url(url: str, protocol: str | None) -> tuple[str, str]:
    """('host:port', protocol) from 'host:port', 'http://host:port' or 'grpc://host:port'."""
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme not in (*PROTOCOLS, "https"):
            raise ServingError(f"unsupported URL scheme {scheme!r} in {url!r}: use http:// or grpc://")
        scheme = "http" if scheme == "https" else scheme
        if protocol is not None and protocol != scheme:
            raise ServingError(f"URL {url!r} says {scheme} but protocol={protocol!r}")
        protocol, url = scheme, rest
    protocol = protocol or "http"
    if protocol not in PROTOCOLS:
        raise ServingError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return url.rstrip("/"), protocol


def _head_from_weights(weights: str | Path) -> nn.Module:
    from veil.models import create_model, get_spec, split_model

    head, _ = split_model(create_model("faceboxes", weights), get_spec("faceboxes").default_split)
    return head.to(memory_format=torch.channels_last)


class VeilClient:
    """Remote detection through Triton with the head and the noise kept on this machine."""

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        model: str | None = None,
        *,
        noise: nn.Module | None = None,
        head: nn.Module | None = None,
        weights: str | Path | None = None,
        allow_clean: bool = False,
        timeout: float = 30.0,
        access_token: str | None = None,
        post: PostProcess | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
    ) -> None:
        if noise is None and not allow_clean:
            raise ServingError(
                "no noise transform given: refusing to send clean activations "
                "(pass noise=..., or allow_clean=True to use the base model knowingly)"
            )
        self.url, self.protocol = _split_url(url, protocol)
        self.model = model or (NOISY_MODEL if noise is not None else BASE_MODEL)
        self.noise, self.allow_clean, self.timeout = noise, allow_clean, float(timeout)
        self.max_batch_size = max_batch_size
        # Triton expects the token under a protocol-specific key on gRPC (PyTriton 0.7 convention).
        key = ACCESS_HEADER if self.protocol == "http" else f"triton-grpc-protocol-{ACCESS_HEADER}"
        self.headers = {key: access_token} if access_token else None
        if head is None and weights is not None:
            head = _head_from_weights(weights)
        self.head = head
        # Decoding only: no Detector here, whose detect() would run the tail on the clean activation.
        self.post = post or PostProcess()
        #: A copy of the activation batch the last request carried (what left this machine).
        self.last_sent: np.ndarray | None = None
        self._client: Any = None
        self._ready = False

    # -- connection ---------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            try:
                if self.protocol == "http":
                    import tritonclient.http as tc

                    self._client = tc.InferenceServerClient(
                        self.url, connection_timeout=self.timeout, network_timeout=self.timeout
                    )
                else:
                    import tritonclient.grpc as tg

                    self._client = tg.InferenceServerClient(self.url)
            except Exception as exc:
                raise ServingError(f"cannot create a {self.protocol} client for {self.url}: {exc}") from exc
        return self._client

    def _fail(self, what: str, exc: BaseException) -> ServingError:
        """One line that says what failed and what to do."""
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            msg = (exc.message() or str(exc)).splitlines()[0][:300]
            status = str(exc.status() or "")
            if "restricted" in msg.lower():
                return ServingError(
                    f"{what}: a restricted endpoint on {self.url}; pass access_token=... "
                    "(the token `veil serve` printed)"
                )
            if (
                "UNAVAILABLE" in status
                or "failed to connect" in msg.lower()
                or "connection refused" in msg.lower()
            ):
                return ServingError(
                    f"Triton at {self.url} ({self.protocol}) is unreachable: is `veil serve` running?"
                )
            if "DEADLINE" in status or "deadline" in msg.lower():
                return ServingError(f"{what} timed out after {self.timeout:g} s ({self.url})")
            code = f" [{status}]" if status else ""
            return ServingError(f"{what} refused by {self.url}{code}: {msg}")
        if isinstance(exc, ConnectionError | OSError):
            return ServingError(
                f"Triton at {self.url} ({self.protocol}) is unreachable ({exc}): is `veil serve` running?"
            )
        if isinstance(exc, TimeoutError):
            return ServingError(f"{what} timed out after {self.timeout:g} s ({self.url})")
        return ServingError(f"{what} failed on {self.url}: {type(exc).__name__}: {exc}")

    def check_ready(self) -> None:
        """Raise ServingError unless the server is live and the model is ready."""
        client = self._connect()
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            live = client.is_server_live(headers=self.headers, **extra)
            ready = live and client.is_model_ready(self.model, headers=self.headers, **extra)
        except Exception as exc:
            raise self._fail("health check", exc) from exc
        if not live:
            raise ServingError(f"Triton at {self.url} is not live")
        if not ready:
            raise ServingError(
                f"model {self.model!r} is not ready on {self.url} (is it in the model repository?)"
            )
        self._ready = True

    # -- inference ----------------------------------------------------------------------------------
    def infer(self, activation: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Send an activation batch as-is -> (loc, conf logits), the tail's signature.

        The low-level call: it sends what it is given. :meth:`detect` is the one that applies the noise.
        """
        x = activation.detach().cpu().float().numpy() if isinstance(activation, Tensor) else activation
        x = np.ascontiguousarray(x, dtype=np.float32)
        locs, scores = [], []
        for start in range(0, max(len(x), 1), self.max_batch_size):
            loc, score = self._send(x[start : start + self.max_batch_size])
            locs.append(loc)
            scores.append(score)
        loc_t = torch.from_numpy(np.concatenate(locs))  # a writable copy of tritonclient's buffers
        score_t = torch.from_numpy(np.concatenate(scores))
        return loc_t, scores_to_logits(score_t)

    def _send(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            check_activation(x, self.max_batch_size)
        except Exception as exc:
            raise ServingError(f"not sending: {exc}") from None
        if not self._ready:
            self.check_ready()
        client = self._connect()
        self.last_sent = x.copy()
        try:
            if self.protocol == "http":
                import tritonclient.http as tc

                inp = tc.InferInput(INPUT_NAME, list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                outs = [tc.InferRequestedOutput(n, binary_data=True) for n in (LOC_NAME, SCORES_NAME)]
                result = client.infer(self.model, [inp], outputs=outs, headers=self.headers)
            else:
                import tritonclient.grpc as tg

                inp = tg.InferInput(INPUT_NAME, list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                outs = [tg.InferRequestedOutput(n) for n in (LOC_NAME, SCORES_NAME)]
                result = client.infer(
                    self.model, [inp], outputs=outs, headers=self.headers, client_timeout=self.timeout
                )
        except Exception as exc:
            raise self._fail(f"inference on {self.model!r}", exc) from exc
        return result.as_numpy(LOC_NAME), result.as_numpy(SCORES_NAME)

    @torch.inference_mode()
    def release(self, images: Sequence[Tensor]) -> tuple[Tensor, Batch]:
        """(activation that would leave the machine, preprocessed batch) for uint8 RGB images."""
        if self.head is None:
            raise ServingError("VeilClient needs head=... or weights=... to run detection on images")
        device = next(self.head.parameters(), torch.empty(0)).device
        batch = preprocess(images, size=INPUT_SIZE, mean_bgr=FACEBOXES_MEAN_BGR, device=device)
        clean = self.head(batch.tensor)
        if self.noise is None:
            return clean, batch
        sent = self.noise(clean.clone())  # a clone: an in-place noise must not alter the reference
        if not self.allow_clean and torch.equal(sent, clean):
            raise ServingError("the noise transform left the activation unchanged: refusing to send it clean")
        return sent, batch

    def detect(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Boxes [M, 5] (x1, y1, x2, y2, score) per image, decoded locally from the server's outputs."""
        sent, batch = self.release(images)
        loc, conf = self.infer(sent)
        return self.post(loc, conf, batch)

    def statistics(self) -> dict[str, Any]:
        """Triton's inference statistics for this model (a restricted endpoint: needs the access token)."""
        client = self._connect()
        try:
            if self.protocol == "http":
                stats = client.get_inference_statistics(self.model, headers=self.headers)
            else:
                stats = client.get_inference_statistics(
                    self.model, headers=self.headers, as_json=True, client_timeout=self.timeout
                )
        except Exception as exc:
            raise self._fail("statistics", exc) from exc
        return dict(stats)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client, self._ready = None, False

    def __enter__(self) -> VeilClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


__all__ = ["VeilClient"]
