"""``veil serve --engine pytriton``: the tails run in this process, behind PyTriton's proxy.

Slower per request than the default Python-backend engine (a second process and a shared-memory hop
per request), but the tails are Python objects in this process, so a hook can watch every request
(tests use it to see exactly what reached the server).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from veil.errors import InputError, ServingError
from veil.serve.validate import (
    ACTIVATION_DIMS,
    INPUT_NAME,
    LOC_DIMS,
    LOC_NAME,
    SCORES_DIMS,
    SCORES_NAME,
    STUB_VALIDATION_SOURCE,
    check_activation,
)

if TYPE_CHECKING:
    from veil.serve.server import ServerConfig

#: Called with (model name, activation batch of one request) for every request that reached a tail.
RequestHook = Callable[[str, np.ndarray], None]


class TailRunner:
    """The PyTriton callable for one tail: batch the requests, run the tail, split the outputs."""

    def __init__(
        self, name: str, tail: nn.Module, device: torch.device, max_batch: int, hook: RequestHook | None
    ) -> None:
        self.name, self.tail, self.device, self.max_batch, self.hook = name, tail, device, max_batch, hook

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        arrays = []
        for req in requests:
            x = req[INPUT_NAME]
            try:
                check_activation(x, self.max_batch)
            except InputError as exc:  # normally stopped earlier by Triton or the stub
                raise ServingError(str(exc)) from None
            if self.hook is not None:
                self.hook(self.name, x)
            arrays.append(x)
        # one copy out of PyTriton's (read-only) shared memory, straight into the fast layout
        x = (
            torch.from_numpy(np.concatenate(arrays))
            .to(self.device)
            .contiguous(memory_format=torch.channels_last)
        )
        with torch.inference_mode():
            loc, scores = self.tail(x)
        loc_np, scores_np = loc.float().cpu().numpy(), scores.float().cpu().numpy()
        out, start = [], 0
        for a in arrays:
            end = start + a.shape[0]
            out.append({LOC_NAME: loc_np[start:end], SCORES_NAME: scores_np[start:end]})
            start = end
        return out


def install_stub_validation(triton: Any) -> None:
    """Append the per-request NaN/Inf check to the proxy ``model.py`` PyTriton uploads for each model."""
    manager = getattr(triton, "_model_manager", None)
    models = list(getattr(manager, "models", []))
    if not models:
        raise ServingError("unsupported PyTriton version: cannot reach its bound models (need 0.7.x)")
    for model in models:
        original = model.get_proxy_model_files

        def patched(original: Callable[[], dict[str, bytes]] = original) -> dict[str, bytes]:
            files = dict(original())
            key = next((k for k in files if k.endswith("/model.py")), None)
            if key is None:
                raise ServingError("unsupported PyTriton version: proxy model.py not found (need 0.7.x)")
            files[key] = files[key] + STUB_VALIDATION_SOURCE.encode()
            return files

        model.get_proxy_model_files = patched


def start_pytriton(
    runners: Mapping[str, TailRunner], c: ServerConfig, http: tuple[str, int], grpc: tuple[str, int]
) -> Any:
    """Bind every runner to a PyTriton ``Triton`` (its HTTP on ``http``, gRPC on ``grpc``) and run it."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    triton_config = TritonConfig(
        http_address=http[0],
        grpc_address=grpc[0],
        metrics_address=c.host,
        http_port=http[1],
        grpc_port=grpc[1],
        metrics_port=c.metrics_port,
        log_verbose=c.log_verbose,
        log_file=c.log_file,
        exit_timeout_secs=c.exit_timeout_s,
        exit_on_error=True,
    )
    restricted: list[str] | None = None if c.restrict else []
    security = TritonSecurityConfig(access_token=c.access_token, restricted_endpoints=restricted)
    triton = Triton(config=triton_config, security_config=security)
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=c.max_queue_delay_us,
        preferred_batch_size=sorted({b for b in (c.max_batch_size // 2, c.max_batch_size) if b > 1}) or None,
    )
    for name, runner in runners.items():
        triton.bind(
            model_name=name,
            infer_func=[runner] * max(1, c.instances),  # threads of this process
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=ACTIVATION_DIMS)],
            outputs=[
                Tensor(name=LOC_NAME, dtype=np.float32, shape=LOC_DIMS),
                Tensor(name=SCORES_NAME, dtype=np.float32, shape=SCORES_DIMS),
            ],
            config=ModelConfig(max_batch_size=c.max_batch_size, batcher=batcher),
            strict=False,
        )
    install_stub_validation(triton)
    try:
        triton.run()
    except Exception as exc:
        triton.stop()
        raise ServingError(
            f"Triton failed to start on {c.host} (ports {c.http_port}/{c.grpc_port}/"
            f"{c.metrics_port} free?): {str(exc).splitlines()[0][:200]}"
        ) from exc
    return triton
