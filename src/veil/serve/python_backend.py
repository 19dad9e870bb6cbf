"""Run the ``tritonserver`` binary from the nvidia-pytriton wheel on a Python-backend repository.

This is ``veil serve``'s default engine. PyTriton puts a second process between Triton and the model
(backend stub -> ZeroMQ -> shared-memory tensor store -> the Python callable, and back); here the
backend stub runs the TorchScript tail itself (:mod:`veil.serve.triton_model`), which on this
machine's 2 cores cuts ~6 ms of fixed cost per request to ~1 ms. The server is the same Triton 2.51,
with the same ports, access-token rules, dynamic batcher and 127.0.0.1 default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import torch
from torch import nn

from veil.errors import ServingError
from veil.serve.export import (
    MODEL_FILENAME,
    _quiet_jit,
    _trace,
    _write_tree_atomically,
    model_config_text,
)
from veil.serve.spec import FACEBOXES, ServedSpec
from veil.serve.validate import ACCESS_HEADER, MAX_BATCH_SIZE

#: Endpoints that need the access token (PyTriton 0.7's defaults).
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
#: Python-backend shared memory per model instance: room for a full batch in and out, grown on demand.
SHM_DEFAULT_BYTES = 16 << 20
SHM_GROWTH_BYTES = 8 << 20


def python_model_source() -> bytes:
    """The Python-backend ``model.py`` (:mod:`veil.serve.triton_model`), copied next to ``model.pt``."""
    return Path(__file__).with_name("triton_model.py").read_bytes()


def write_served_repository(
    out: str | Path,
    served: Mapping[str, nn.Module],
    *,
    gpu: bool = False,
    max_batch_size: int = MAX_BATCH_SIZE,
    instances: int = 1,
    max_queue_delay_us: int = 2000,
    parameters: Mapping[str, str] | None = None,
    spec: ServedSpec = FACEBOXES,
    specs: Mapping[str, ServedSpec] | None = None,
) -> None:
    """A Python-backend repository of tails prepared for serving (``{name: ScoresTail or TorchScript}``),
    written atomically; eager modules are traced on their own device. ``specs``: a model's own wire spec
    where it differs from ``spec``."""
    files: dict[str, bytes] = {}
    for name, module in served.items():
        own = (specs or {}).get(name, spec)
        if not isinstance(module, torch.jit.ScriptModule):
            device = next(module.parameters()).device
            module = _trace(module, torch.zeros(own.example_shape(1), device=device))
        buf = io.BytesIO()
        with _quiet_jit():
            torch.jit.save(module, buf)
        files[f"{name}/1/{MODEL_FILENAME}"] = buf.getvalue()
        files[f"{name}/1/model.py"] = python_model_source()
        config = model_config_text(
            name,
            gpu=gpu,
            max_batch_size=max_batch_size,
            instances=instances,
            backend="python",
            max_queue_delay_us=max_queue_delay_us,
            parameters=parameters,
            spec=own,
        )
        files[f"{name}/config.pbtxt"] = config.encode()
    _write_tree_atomically(Path(out), files)


def _wheel_dirs() -> tuple[Path, Path]:
    """(the wheel's ``tritonserver`` folder, its bundled shared libraries)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError("nvidia-pytriton is not installed: pip install 'nvidia-pytriton<0.8'")
    package = Path(next(iter(spec.submodule_search_locations)))
    dist, libs = package / "tritonserver", package.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServingError(f"no tritonserver binary under {dist}: reinstall nvidia-pytriton")
    return dist, libs


def prepare_backends(workspace: Path) -> Path:
    """A backend folder holding the Python backend and the stub built for this interpreter's version."""
    dist, _ = _wheel_dirs()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    target = workspace / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist / "backends" / "python" / name, target / name)
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return workspace / "backends"


def ensure_libpython_on_ld_path() -> str:
    """Put this interpreter's libpython folder first on ``LD_LIBRARY_PATH`` (the stub needs it)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in parts:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *parts])
    return libdir


def server_env() -> dict[str, str]:
    """The stub links libpython (its folder goes first, see DEVELOPERS.md) and the wheel's libraries,
    and must find this environment's torch: this interpreter's ``bin`` goes first on PATH."""
    ensure_libpython_on_ld_path()
    _, libs = _wheel_dirs()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([env["LD_LIBRARY_PATH"], str(libs)]).strip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    return env


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the Python process that started it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def connectable_host(host: str) -> str:
    """A host to connect to for a bind address (the wildcard addresses are reached via loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (Triton's private HTTP behind the guard)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def unix_address(path: Path) -> tuple[str, int]:
    """Triton's ``--http-address``/``--grpc-address`` for a Unix socket (the wheel's 2.51 takes
    ``unix:PATH``; gRPC appends ``:PORT`` to the path, so its socket is ``PATH:0``)."""
    return f"unix:{path}", 0


def grpc_target(address: tuple[str, int]) -> str:
    """The gRPC target a channel dials for Triton's gRPC ``address``."""
    host, port = address
    return f"{host}:{port}" if host.startswith("unix:") else f"{connectable_host(host)}:{port}"


class TritonProcess:
    """One ``tritonserver`` child process: start it, wait until every model is ready, stop it.

    ``http``/``grpc``: ``(host, port)`` or :func:`unix_address`; ``access_token`` goes on Triton's
    command line (visible in ``ps``), so ``veil serve`` passes none when its guards check the token;
    ``env``: extra environment for Triton and its backend stubs.
    """

    def __init__(
        self,
        repository: Path,
        workspace: Path,
        *,
        http: tuple[str, int],
        grpc: tuple[str, int],
        metrics: tuple[str, int],
        access_token: str | None,
        log_file: Path,
        log_verbose: int = 0,
        exit_timeout_s: int = 5,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.repository, self.workspace, self.log_file = repository, workspace, log_file
        self.exit_timeout_s, self.env = exit_timeout_s, dict(env or {})
        self.http = http
        dist, _ = _wheel_dirs()
        self.cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={prepare_backends(workspace)}",
            f"--http-address={http[0]}",
            f"--http-port={http[1]}",
            f"--grpc-address={grpc[0]}",
            f"--grpc-port={grpc[1]}",
            f"--metrics-address={metrics[0]}",
            f"--metrics-port={metrics[1]}",
            f"--log-verbose={log_verbose}",
            f"--exit-timeout-secs={exit_timeout_s}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--backend-config=python,shm-region-prefix-name=veil_{os.getpid()}_{os.urandom(4).hex()}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]
        if access_token:
            rule = f"{','.join(RESTRICTED_APIS)}:{ACCESS_HEADER}={access_token}"
            self.cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, models: Sequence[str], timeout_s: float = 180.0) -> None:
        """Launch and block until Triton and ``models`` are ready; a ServingError with its log if not."""
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=server_env() | self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while not all(self._ready(f"/v2/models/{m}/ready") for m in models):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise ServingError(f"Triton exited while starting (code {code}): {self._why()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServingError(f"Triton not ready after {timeout_s:.0f} s: {self._why()}")
            time.sleep(0.2)

    def _ready(self, path: str) -> bool:
        host, port = self.http
        conn: http.client.HTTPConnection
        if host.startswith("unix:"):
            conn = _UnixHTTPConnection(host[len("unix:") :], timeout=2)
        else:
            conn = http.client.HTTPConnection(connectable_host(host).strip("[]"), port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _why(self) -> str:
        """The first real error lines of Triton's log (what a user needs to fix a failed start)."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        noise = ("CudaDriverHelper", "pinned memory", "NVML", "DCGM", "CUDA")
        errors = [
            ln for ln in lines if (ln.startswith("E") or "Failed" in ln) and not any(n in ln for n in noise)
        ]
        return " | ".join(ln.strip()[:240] for ln in (errors or lines[-2:])[:2]) + f" (log: {self.log_file})"

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGINT (Triton drains in-flight requests for ``exit_timeout_s``), then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=self.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _check_ports_free(host: str, ports: tuple[int, ...]) -> None:
    """Fail fast with a clear message (Triton itself would only time out the start-up check)."""
    if len(set(ports)) != len(ports):
        raise ServingError(f"HTTP, gRPC and metrics ports must differ, got {ports}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise ServingError(
                    f"cannot listen on {host}:{port} ({exc.strerror}): choose another port"
                ) from None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (main thread only); previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def free_ports(n: int = 3) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together so they cannot collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
