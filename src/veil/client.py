"""The trusted side of remote inference: image -> head -> noise locally, only ``INPUT__0`` on the wire.

:class:`VeilClient` talks to Triton (``veil serve`` or any Triton serving an exported repository) with
``tritonclient`` over HTTP or gRPC (``https://`` and ``grpcs://`` over TLS, verified against the system's
or ``ca_cert``'s roots; never downgraded), binary tensors only.

It only sends what its own head and noise produced from images (:meth:`detect`); :meth:`infer`, which sends
a caller's tensor, needs ``allow_clean=True``. Without a noise module it will not start unless allowed, and
before each request it checks that the noise is a real :class:`~veil.noise.NoiseTransform` whose σ is not
below the transform's recorded floor (nor negligible against the activation). Built from a transform
(``transform=``), the head comes from that transform (its split and fine-tuned block, checked against its
recorded head fingerprint) and ``expect_release`` pins the audited release digest. ``last_sent`` holds a
copy of exactly what the last request carried, so tests (and the curious) can check what left the machine.
``sticky_key`` (bytes or a key file, :mod:`veil.sticky`) makes the noise a function of the key and the
head's input: the same image sent again releases the same tensor (the key stays here, never sent or logged).

One client per thread: tritonclient's connections are not meant to be shared across threads.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.artifact import Transform
from veil.client_parts import head_from_weights, transform_parts
from veil.errors import ServingError
from veil.faceboxes.detect import PostProcess
from veil.imageio import FACEBOXES_MEAN_BGR, Batch, preprocess
from veil.noise import NoiseTransform
from veil.serve.export import scores_to_logits
from veil.serve.remote import PROTOCOLS as PROTOCOLS  # re-exported
from veil.serve.remote import Parts, eval_mode, is_protected, leaves, protected_parts, request, split_url
from veil.serve.spec import FACEBOXES, check_wire, unflatten
from veil.serve.validate import ACCESS_HEADER, BASE_MODEL, INPUT_SIZE, MAX_BATCH_SIZE, NOISY_MODEL
from veil.sticky import check_key, load_key, sticky_seeds

_split_url = split_url  # the name it had here
#: Noise whose mean σ is below this share of the activation's RMS (SNR above 60 dB) is no noise at all.
NEGLIGIBLE = 1e-3


def _sticky(key: bytes | str | Path, noise: nn.Module | None) -> bytes:
    """The checked sticky key (bytes, or a key file's); only a veil NoiseTransform can use one."""
    if not isinstance(noise, NoiseTransform):
        raise ServingError("sticky_key needs a noise transform (transform=... or noise=...): nothing to seed")
    return load_key(key) if isinstance(key, str | Path) else check_key(key)


def _protected(transform: Any) -> bool:
    """A protected model's transform (``veil.load``), or a directory :func:`veil.protect` saved."""
    from veil.serve.spec import is_generic

    return is_protected(transform) or (isinstance(transform, str | Path) and is_generic(transform))


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
        transform: Transform | str | Path | None = None,
        expect_release: str | None = None,
        allow_clean: bool = False,
        timeout: float = 30.0,
        access_token: str | None = None,
        post: PostProcess | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        ca_cert: str | Path | None = None,
        pytorch_model: nn.Module | None = None,
        sticky_key: bytes | str | Path | None = None,
    ) -> None:
        self.sigma_floor: float | None = None
        #: A protected model's head, noise and wire/output specs (``transform=veil.load(dir, model)``).
        self.parts: Parts | None = None
        self.spec = FACEBOXES
        if transform is not None and _protected(transform):
            if noise is not None or head is not None or weights is not None:
                raise ServingError(
                    "a protected model's transform brings its own head and noise: pass only it"
                )
            self.parts = parts = protected_parts(transform, pytorch_model)
            recorded = str(parts.meta.get("release_sha256", ""))
            if expect_release is not None and not recorded.startswith(expect_release.strip().lower()):
                raise ServingError(
                    f"release {recorded[:16]}… is not the audited release {expect_release[:16]}…"
                )
            head, noise, self.sigma_floor, self.spec = parts.head, parts.noise, parts.sigma_floor, parts.spec
            model = model or parts.spec.noisy
        elif transform is not None:
            if noise is not None:
                raise ServingError("give transform=... or noise=..., not both (the noise comes from it)")
            tr, head = transform_parts(transform, head, weights, expect_release)
            noise, self.sigma_floor = tr.noise, tr.meta.get("sigma_floor")
        elif expect_release is not None:
            raise ServingError("expect_release needs transform=...: only a transform records its release")
        elif noise is not None and head is None and weights is not None:
            raise ServingError(
                "weights=... with noise=... would guess the head: pass transform=... (its head is built "
                "for its split) or head=..."
            )
        if noise is None and not allow_clean:
            raise ServingError(
                "no noise transform given: refusing to send clean activations "
                "(pass transform=... or noise=..., or allow_clean=True to use the base model knowingly)"
            )
        if noise is not None and not allow_clean and not isinstance(noise, NoiseTransform):
            raise ServingError(
                f"noise must be a veil NoiseTransform, not {type(noise).__name__}: its σ is checked before "
                "sending (or pass allow_clean=True)"
            )
        self.url, self.protocol, self.tls = split_url(url, protocol)
        if ca_cert is not None and not self.tls:
            raise ServingError("ca_cert is for TLS: use an https:// or grpcs:// URL")
        if ca_cert is not None and not Path(ca_cert).is_file():
            raise ServingError(f"CA certificate not found: {ca_cert}")
        self.ca_cert = None if ca_cert is None else str(ca_cert)
        self.model = model or (NOISY_MODEL if noise is not None else BASE_MODEL)
        self.noise, self.allow_clean, self.timeout = noise, allow_clean, float(timeout)
        self._sticky_key = None if sticky_key is None else _sticky(sticky_key, noise)
        self.max_batch_size = max_batch_size
        # Triton expects the token under a protocol-specific key on gRPC (PyTriton 0.7 convention).
        key = ACCESS_HEADER if self.protocol == "http" else f"triton-grpc-protocol-{ACCESS_HEADER}"
        self.headers = {key: access_token} if access_token else None
        if head is None and weights is not None:
            head = head_from_weights(weights)  # clean use only: with noise, the head comes from a transform
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

                    tls: dict[str, Any] = {"ssl": True} if self.tls else {}
                    if self.ca_cert:
                        tls["ssl_options"] = {"ca_certs": self.ca_cert}
                    self._client = tc.InferenceServerClient(
                        self.url, connection_timeout=self.timeout, network_timeout=self.timeout, **tls
                    )
                else:
                    import tritonclient.grpc as tg

                    self._client = tg.InferenceServerClient(
                        self.url, ssl=self.tls, root_certificates=self.ca_cert
                    )
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
            if self.tls and "UNAVAILABLE" in status:
                return ServingError(
                    f"{what}: no TLS connection to {self.url} ({msg[:160]}): is it serving TLS with a "
                    "certificate for this host? pass ca_cert=... (--ca-cert) if its CA is not a system root"
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
        if self.tls and (isinstance(exc, ssl.SSLError) or "ssl" in str(exc).lower()):
            return ServingError(
                f"TLS with {self.url} failed ({str(exc).splitlines()[0][:160]}): is it serving TLS with a "
                "certificate for this host? pass ca_cert=... (--ca-cert) if its CA is not a system root"
            )
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
    def infer(self, activation: Tensor | np.ndarray) -> Any:
        """FaceBoxes: send an activation batch as-is -> (loc, conf logits), the tail's signature.

        The low-level call sends what it is given, so it needs ``allow_clean=True``; :meth:`detect` is the
        one that runs the head and the noise.

        A protected model (``transform=veil.load(dir, model)``): ``activation`` is the model's input; the
        head and the noise run here, only the release is sent, and the tail's outputs come back in the
        model's own structure (tensor, tuple, dict).
        """
        if self.parts is not None:
            return self._infer_protected(activation)
        if not self.allow_clean:
            raise ServingError(
                "infer() sends a tensor as given: use detect(images), which adds the noise, "
                "or build the client with allow_clean=True"
            )
        return self._infer(activation)

    def _infer(self, activation: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
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

    def _send(self, x: np.ndarray) -> list[np.ndarray]:
        """One request of at most ``max_batch_size``: the outputs in the spec's order."""
        try:
            check_wire(x, self.spec.input, self.max_batch_size)
        except Exception as exc:
            raise ServingError(f"not sending: {exc}") from None
        if not self._ready:
            self.check_ready()
        client = self._connect()
        self.last_sent = x.copy()
        inputs, outputs = request(self.protocol, self.spec, x)
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = client.infer(self.model, inputs, outputs=outputs, headers=self.headers, **extra)
        except Exception as exc:
            raise self._fail(f"inference on {self.model!r}", exc) from exc
        return leaves(result, self.spec, len(x))

    def _infer_protected(self, x: Tensor | np.ndarray) -> Any:
        parts = self.parts
        assert parts is not None
        x = torch.as_tensor(x)
        with torch.inference_mode(), eval_mode(parts.head, parts.noise):
            device = next(parts.head.parameters(), torch.empty(0)).device
            clean = parts.head(x.to(device))
            self._check_noise(clean)
            seeds = None if self._sticky_key is None else sticky_seeds(self._sticky_key, x)
            sent = parts.noise(clean.clone(), seeds=seeds)  # a clone: the reference must stay clean
            if torch.equal(sent, clean):
                raise ServingError("the noise left the activation unchanged: refusing to send it clean")
        wire = np.ascontiguousarray(sent.detach().cpu().numpy(), dtype=self.spec.input.numpy_dtype)
        chunks = [
            self._send(wire[i : i + self.max_batch_size]) for i in range(0, len(wire), self.max_batch_size)
        ]
        outs = [
            torch.from_numpy(np.concatenate([c[k] for c in chunks])) for k in range(len(self.spec.outputs))
        ]
        return unflatten(outs, self.spec.treespec)

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
        if not self.allow_clean:
            self._check_noise(clean)
        if self._sticky_key is None:
            sent = self.noise(clean.clone())  # a clone: an in-place noise must not alter the reference
        else:
            sent = self.noise(clean.clone(), seeds=sticky_seeds(self._sticky_key, batch.tensor))
        if not self.allow_clean and torch.equal(sent, clean):
            raise ServingError("the noise transform left the activation unchanged: refusing to send it clean")
        return sent, batch

    def _check_noise(self, clean: Tensor) -> None:
        """Refuse degenerate noise: σ below the release's recorded floor, or negligible for ``clean``."""
        noise = self.noise
        assert isinstance(noise, NoiseTransform)  # checked when built
        sigma = (
            noise.sigma(clean).expand_as(clean) if noise.conditional else noise.sigma().expand(noise.shape)
        )
        kept = sigma[noise.keep.expand_as(sigma)]
        if not kept.numel():
            return  # every element suppressed: only the constant mu is sent
        floor = self.sigma_floor
        low = float(kept.min())
        if floor is not None and low < floor * (1 - 1e-5):
            raise ServingError(
                f"the noise's smallest σ ({low:.3g}) is below its release's recorded floor ({floor:.3g}): "
                "the noise module was altered; refusing to send"
            )
        rms = float(clean.float().pow(2).mean().sqrt())
        if float(kept.float().mean()) < NEGLIGIBLE * rms:
            raise ServingError(
                f"the noise's σ (mean {float(kept.mean()):.3g}) is negligible against the activation "
                f"(RMS {rms:.3g}): refusing to send it as good as clean"
            )

    def detect(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Boxes [M, 5] (x1, y1, x2, y2, score) per image, decoded locally from the server's outputs."""
        if self.parts is not None:
            raise ServingError("detect() is FaceBoxes' post-processing: use infer(x) for a protected model")
        sent, batch = self.release(images)
        loc, conf = self._infer(sent)
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
