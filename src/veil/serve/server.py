"""An embedded NVIDIA Triton server that runs the tail on whatever activations arrive.

The real ``tritonserver`` binary shipped in the nvidia-pytriton wheel, with Triton's dynamic batcher in
front of the tails. Two engines:

* ``python`` (default, :mod:`veil.serve.python_backend`): the tails are saved as TorchScript into a
  Python-backend repository that Triton's backend stub runs itself: the fastest path.
* ``pytriton`` (:mod:`veil.serve.pytriton_engine`): the tails stay Python objects in this process
  behind PyTriton's proxy; slower, but ``on_request`` can watch every request.

Hardening either way:

* ``LD_LIBRARY_PATH`` gets this interpreter's libpython folder before the server starts: the backend
  stub links against libpython and, without it, dies with ``_thread.RLock has no attribute
  _recursion_count`` on pyenv-style installs.
* Triton's frontend rejects wrong names, dtypes, shapes, sizes and oversize batches (HTTP 400 /
  gRPC INVALID_ARGUMENT). NaN/Inf values are rejected per request inside the backend stub, so a bad
  request never fails a good one batched with it.
* Restricted endpoints (statistics, model repository, shared memory, trace, logging) need the
  ``triton-access-token`` header; the server binds 127.0.0.1 unless told otherwise.
* Guards (:mod:`veil.serve.guard` for HTTP, :mod:`veil.serve.grpc_guard` for gRPC) sit on the public
  ports and refuse what would crash Triton 2.51 or fail other clients' requests (deeply nested JSON,
  batches of 0 or 2^62, oversized messages, paths veil does not serve). With the python engine Triton
  itself listens on Unix sockets in the private (0700) workspace, so only the guards reach it, and
  the guards check the access token: it never appears on a command line.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.errors import ServingError
from veil.serve.export import ScoresTail, build_tails, frozen_for_serving, load_repository
from veil.serve.python_backend import (
    _check_ports_free,
    _stop_on_signals,
    connectable_host,
    ensure_libpython_on_ld_path,
    free_ports,
    grpc_target,
    unix_address,
)
from veil.serve.pytriton_engine import RequestHook, TailRunner, start_pytriton
from veil.serve.spec import FACEBOXES, ServedSpec
from veil.serve.validate import BASE_MODEL, MAX_BATCH_SIZE, NOISY_MODEL

ENGINES = ("python", "pytriton")
#: libgomp's spin count for the backend stubs (unless the environment sets OMP_WAIT_POLICY or
#: GOMP_SPINCOUNT): its default spins an idle PyTorch thread for milliseconds after every parallel
#: region, on the core another instance (or the client, on loopback) needs. 10,000 spins (~50 us)
#: kept a lone batch on 2 threads as fast as the default.
OMP_SPIN = 10_000


@dataclass(frozen=True)
class ServerConfig:
    """Where and how to serve. ``access_token=None`` generates one (PyTriton 0.7 behaviour)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = MAX_BATCH_SIZE
    #: 0: a request that finds an instance free runs at once; those queued while every instance is busy
    #: are still batched (the old 500 us only delayed a lone request).
    max_queue_delay_us: int = 0
    #: Model instances per tail; 0 = auto (python engine on CPU: 2, each with half the cores'
    #: threads — on 2 cores that served 8 clients 2.2x faster than one client; otherwise 1).
    instances: int = 0
    #: Serve TorchScript (traced, frozen) tails instead of eager PyTorch: see ``frozen_for_serving``.
    freeze: bool = True
    access_token: str | None = None
    restrict: bool = True
    log_verbose: int = 0
    #: Triton's own log goes here instead of this process's stdout when set.
    log_file: Path | None = None
    #: On shutdown, how long Triton waits for in-flight requests and idle keep-alive connections.
    exit_timeout_s: int = 5
    #: ``python``: Triton's backend stub runs the TorchScript tails; ``pytriton``: this process does.
    engine: str = "python"
    #: PyTorch CPU threads per model instance in the ``python`` engine (0: auto, cores / instances,
    #: and every core for a batch that runs while no other instance is running one).
    threads: int = 0
    #: ``python`` engine: save every accepted activation here as ``.npy`` (audit what clients send).
    record_dir: Path | None = None
    #: Record quota (``record_dir``), over all model instances: stop recording past this many bytes
    #: or files (one log line says so); serving goes on.
    record_max_bytes: int = 1 << 30
    record_max_files: int = 10_000
    #: Put :class:`veil.serve.guard.HttpGuard` on the HTTP port (Triton itself on a private socket).
    http_guard: bool = True
    #: Put :class:`veil.serve.grpc_guard.GrpcGuard` on the gRPC port (Triton itself on a private socket).
    grpc_guard: bool = True


@dataclass(frozen=True)
class Endpoints:
    """What a client needs: the three URLs (host:port, as tritonclient takes them) and the token."""

    http: str
    grpc: str
    metrics: str
    access_token: str | None

    def lines(self) -> list[str]:
        """The reference design's endpoint listing."""
        return [f"http: {self.http}", f"grpc: {self.grpc}", f"metrics: {self.metrics}/metrics"]


def _channels_last(tail: nn.Module) -> nn.Module:
    """A copy in the layout CPU convolutions are fastest in (the caller's module is left alone)."""
    return copy.deepcopy(tail).eval().to(memory_format=torch.channels_last)


class VeilServer:
    """Serve ``{model name: served tail}`` (modules returning (loc, softmax scores)) over HTTP/gRPC."""

    def __init__(
        self,
        tails: Mapping[str, nn.Module],
        config: ServerConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        on_request: RequestHook | None = None,
        spec: ServedSpec = FACEBOXES,
        specs: Mapping[str, ServedSpec] | None = None,
    ) -> None:
        if not tails:
            raise ServingError("nothing to serve: no tails given")
        self.config = config or ServerConfig()
        self.device, self.spec = torch.device(device), spec
        #: each model's own wire spec (``specs`` where given, else ``spec``): Triton's config per model
        self.specs = {name: (specs or {}).get(name, spec) for name in tails}
        if any(s is not FACEBOXES for s in self.specs.values()) and self.config.engine != "python":
            raise ServingError("a protected model's tail is served by the python engine only")
        served: dict[int, nn.Module] = {}  # one frozen copy per distinct module (base may be noisy)
        for tail in tails.values():
            if id(tail) not in served:
                module = tail.to(self.device).eval()
                served[id(tail)] = frozen_for_serving(module, self.device) if self.config.freeze else module
        if self.config.engine not in ENGINES:
            raise ServingError(f"unknown engine {self.config.engine!r}: choose one of {', '.join(ENGINES)}")
        if on_request is not None and self.config.engine != "pytriton":
            raise ServingError("on_request needs engine='pytriton' (the python engine has record_dir)")
        if self.config.record_dir is not None and self.config.engine != "python":
            raise ServingError("record_dir needs engine='python' (the pytriton engine has on_request)")
        self.served = {name: served[id(tail)] for name, tail in tails.items()}
        self.runners = {
            name: TailRunner(name, module, self.device, self.config.max_batch_size, on_request)
            for name, module in self.served.items()
        }
        self._triton: Any = None
        self._guards: list[Any] = []
        self._workspace: Path | None = None
        self._token: str | None = None

    @classmethod
    def from_tails(
        cls,
        base_tail: nn.Module,
        noisy_tail: nn.Module | None = None,
        config: ServerConfig | None = None,
        **kwargs: Any,
    ) -> VeilServer:
        """Both models from eager tails (logits out); ``noisy_tail`` defaults to the base weights."""
        base = _channels_last(base_tail)
        noisy = base if noisy_tail is None or noisy_tail is base_tail else _channels_last(noisy_tail)
        tails = {BASE_MODEL: ScoresTail(base), NOISY_MODEL: ScoresTail(noisy)}
        return cls(tails, config, **kwargs)

    @classmethod
    def from_weights(
        cls,
        weights: str | Path,
        *,
        tail_state_dict: Mapping[str, torch.Tensor] | None = None,
        noisy_tail: nn.Module | None = None,
        config: ServerConfig | None = None,
        **kwargs: Any,
    ) -> VeilServer:
        """Tails from a checkpoint; the noisy model uses ``noisy_tail`` or ``tail_state_dict`` if given."""
        base, noisy = build_tails(weights, tail_state_dict=tail_state_dict)
        return cls.from_tails(base, noisy_tail or noisy, config, **kwargs)

    @classmethod
    def from_repository(
        cls, path: str | Path, config: ServerConfig | None = None, *, device: str = "cpu", **kwargs: Any
    ) -> VeilServer:
        """Serve the TorchScript tails of an exported repository (``veil export triton``)."""
        models = load_repository(path, device)
        return cls({name: module for name, (_, module) in models.items()}, config, device=device, **kwargs)

    @classmethod
    def from_transform(
        cls,
        path: str | Path | Sequence[str | Path],
        config: ServerConfig | None = None,
        *,
        device: str = "cpu",
        **kwargs: Any,
    ) -> VeilServer:
        """Serve a protected model's tail (``tail.pt`` of a :func:`veil.protect` transform directory).

        Only its noisy model (the transform's ``triton.noisy`` name) is served: see :mod:`veil.serve.generic`.
        Several directories (a list) are served side by side by one Triton, each under its own name with
        its own wire spec (two transforms naming the same model are refused in one line).
        """
        from veil.serve.generic import load_served_tail

        paths = [path] if isinstance(path, str | Path) else list(path)
        tails: dict[str, nn.Module] = {}
        specs: dict[str, ServedSpec] = {}
        for p in paths:
            spec, tail, _ = load_served_tail(p, device)
            if spec.noisy in tails:
                raise ServingError(f"{p}: another transform given is also served as {spec.noisy}: give one")
            tails[spec.noisy], specs[spec.noisy] = tail, spec
        if not tails:
            raise ServingError("nothing to serve: no transform directories given")
        return cls(tails, config, device=device, spec=next(iter(specs.values())), specs=specs, **kwargs)

    @property
    def endpoints(self) -> Endpoints:
        host = connectable_host(self.config.host)
        c = self.config
        return Endpoints(
            http=f"{host}:{c.http_port}",
            grpc=f"{host}:{c.grpc_port}",
            metrics=f"{host}:{c.metrics_port}",
            access_token=self.access_token,
        )

    @property
    def access_token(self) -> str | None:
        return self._token if self._triton is not None else self.config.access_token

    def start(self) -> VeilServer:
        """Start tritonserver, load both models, return once they are ready."""
        if self._triton is not None:
            return self
        c = self.config
        _check_ports_free(c.host, (c.http_port, c.grpc_port, c.metrics_port))
        ensure_libpython_on_ld_path()
        try:
            if c.engine == "pytriton":  # PyTriton dials Triton over TCP: private loopback ports
                loop = [("127.0.0.1", port) for port in free_ports(2)]
                http = loop[0] if c.http_guard else (c.host, c.http_port)
                grpc = loop[1] if c.grpc_guard else (c.host, c.grpc_port)
                self._triton = start_pytriton(self.runners, c, http=http, grpc=grpc)
                self._token = self._triton.get_access_token()
            else:
                self._token = (c.access_token or secrets.token_urlsafe(32)) if c.restrict else None
                self._workspace = Path(tempfile.mkdtemp(prefix="veil-triton-"))  # 0700: only we connect
                sockets = self._workspace / "s"
                sockets.mkdir(mode=0o700)
                http = unix_address(sockets / "http") if c.http_guard else (c.host, c.http_port)
                grpc = unix_address(sockets / "grpc") if c.grpc_guard else (c.host, c.grpc_port)
                self._triton = self._start_python_engine(self._workspace, http, grpc)
            body = max(spec.max_body_bytes(c.max_batch_size) for spec in self.specs.values())
            if c.http_guard:
                from veil.serve.guard import HttpGuard

                upstream = http[0][len("unix:") :] if http[0].startswith("unix:") else http
                kw = {"max_batch_size": c.max_batch_size, "token": self._token, "max_body_bytes": body}
                self._guards.append(HttpGuard(c.host, c.http_port, upstream, **kw).start())  # type: ignore[arg-type]
            if c.grpc_guard:
                from veil.serve.grpc_guard import GrpcGuard

                guard = GrpcGuard(
                    c.host,
                    c.grpc_port,
                    grpc_target(grpc),
                    max_batch_size=c.max_batch_size,
                    token=self._token,
                    max_message_bytes=body,
                )
                self._guards.append(guard.start())
        except BaseException:
            self.stop()
            raise
        return self

    def instances_and_threads(self) -> tuple[int, int]:
        """(model instances per tail, PyTorch threads per instance; 0 = PyTorch's default)."""
        c = self.config
        if c.engine != "python" or self.device.type != "cpu":
            return max(1, c.instances), c.threads
        cores = _cores()
        instances = c.instances or (2 if cores >= 2 else 1)
        return instances, c.threads or max(1, cores // instances)

    def _start_python_engine(self, workspace: Path, http: tuple[str, int], grpc: tuple[str, int]) -> Any:
        from veil.serve.python_backend import TritonProcess, write_served_repository

        c = self.config
        instances, threads = self.instances_and_threads()
        params = {"device": str(self.device), "threads": str(threads), "freeze": str(c.freeze).lower()}
        env: dict[str, str] = {}
        cores = _cores()
        if c.threads == 0 and self.device.type == "cpu" and cores > threads:
            # a lone request gets every core; concurrent ones one share each (triton_model._Cores)
            (workspace / "cores").mkdir(mode=0o700)
            env |= {"VEIL_CORES_DIR": str(workspace / "cores"), "VEIL_THREADS_ALONE": str(cores)}
            if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
                env["GOMP_SPINCOUNT"] = str(OMP_SPIN)
        if c.record_dir is not None:  # not a config parameter: GET .../config would publish the path
            Path(c.record_dir).mkdir(parents=True, exist_ok=True)
            stubs = instances * len(self.served)  # each backend stub keeps its share of the quota
            env |= {
                "VEIL_RECORD_DIR": str(Path(c.record_dir).resolve()),
                "VEIL_RECORD_MAX_BYTES": str(c.record_max_bytes // stubs),
                "VEIL_RECORD_MAX_FILES": str(max(1, c.record_max_files // stubs)),
            }
        repo = workspace / "model_repository"
        write_served_repository(
            repo,
            self.served,
            gpu=self.device.type == "cuda",
            max_batch_size=c.max_batch_size,
            instances=instances,
            max_queue_delay_us=c.max_queue_delay_us,
            parameters=params,
            spec=self.spec,
            specs=self.specs,
        )
        guarded = c.http_guard and c.grpc_guard  # the guards check the token: keep it off argv
        process = TritonProcess(
            repo,
            workspace,
            http=http,
            grpc=grpc,
            metrics=(c.host, c.metrics_port),
            access_token=None if guarded else self._token,
            log_file=Path(c.log_file) if c.log_file else workspace / "triton.log",
            log_verbose=c.log_verbose,
            exit_timeout_s=c.exit_timeout_s,
            env=env,
        )
        process.start(list(self.served))
        return process

    def is_alive(self) -> bool:
        return self._triton is not None and bool(self._triton.is_alive())

    def stop(self) -> None:
        """Stop the guard, tritonserver and its backends, and delete the workspace."""
        guards, self._guards = self._guards, []
        for guard in guards:
            guard.stop()
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        workspace, self._workspace = self._workspace, None
        if workspace is not None:
            shutil.rmtree(workspace, ignore_errors=True)

    def __enter__(self) -> VeilServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def serve_forever(
        self,
        stop: threading.Event | None = None,
        *,
        on_ready: Callable[[VeilServer], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        """Block until SIGINT/SIGTERM (or ``stop`` is set, or Triton dies), then shut down cleanly."""
        stop = stop or threading.Event()
        with _stop_on_signals(stop):
            self.start()
            try:
                if on_ready is not None:
                    on_ready(self)
                while not stop.wait(poll_s):
                    if not self.is_alive():
                        raise ServingError("Triton exited unexpectedly (see its log above)")
            finally:
                self.stop()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


__all__ = [
    "Endpoints",
    "RequestHook",
    "ServerConfig",
    "VeilServer",
    "ensure_libpython_on_ld_path",
    "free_ports",
]
