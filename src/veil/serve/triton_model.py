"""The ``model.py`` of a Python-backend tail: Triton's backend stub runs the TorchScript tail itself.

This file is copied verbatim next to ``model.pt`` (``veil export triton --backend python`` and
``veil serve``). It imports only numpy and torch, so it runs on any Triton whose Python backend can
import torch. Compared with PyTriton's proxy there is no second process and no extra copy per request:
the tensors Triton hands the stub go straight into the tail.

Its input and output names, the input's rank and the outputs' dtypes come from the ``model_config`` Triton
passes to ``initialize`` (``config.pbtxt``, written from the transform's wire and output specs), so one file
serves FaceBoxes (``INPUT__0`` -> ``OUTPUT__0``, ``OUTPUT__1``) and any tail veil protects; the TorchScript
returns a flat tuple of the model's output leaves (a lone tensor or a dict of tensors also works).

Per request, before batching: a float input holding NaN or Inf, or not shaped [N, ...] with
1 <= N <= max_batch_size, is answered INVALID_ARG (HTTP 400) on its own, so one bad client never fails
the good requests batched with it. Triton's frontend has already checked the input's name, dtype, shape
and byte size against ``config.pbtxt``; a batch of 0 or 2^62 slips past it and makes the Python backend
itself refuse the whole merged batch before ``execute`` runs, which is why ``veil serve``'s guards
refuse such requests on both protocols before they reach Triton (``veil.serve.checks``).

Parameters (``config.pbtxt``): ``device`` (cpu, cuda), ``threads`` (PyTorch CPU threads, 0 = default),
``freeze`` (``false`` keeps the TorchScript as saved). Environment (not published by ``GET .../config``):
``VEIL_CORES_DIR`` + ``VEIL_THREADS_ALONE`` share the cores between instances (every tail's, one process
each): a batch runs on ``VEIL_THREADS_ALONE`` threads while no other instance is running one, else on
``threads`` (each instance holds a lock on its own file there while it runs a batch);
``VEIL_RECORD_DIR`` saves every accepted activation there as ``.npy`` (an audit of what clients send),
until this instance has written ``VEIL_RECORD_MAX_BYTES`` bytes or ``VEIL_RECORD_MAX_FILES`` files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
import uuid
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's backend stub

MODEL_FILE = "model.pt"
#: config.pbtxt data types -> numpy (what the outputs are cast to before they are answered).
NUMPY_TYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_FP64": np.float64,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_INT16": np.int16,
    "TYPE_INT8": np.int8,
    "TYPE_UINT8": np.uint8,
    "TYPE_BOOL": np.bool_,
}


def _leaves(out: Any) -> list[Any]:
    """The tail's outputs as a flat list (veil serves flat tuples; a lone tensor or a dict also works)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out]


def _param(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


def _invalid(message: str) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


class _Cores:
    """Threads for the next batch: ``alone`` while no other instance runs one, else ``shared``."""

    def __init__(self, folder: str, name: str, alone: int, shared: int) -> None:
        self.folder, self.alone, self.shared = folder, alone, shared
        self.me = f"{name}-{os.getpid()}"
        self.fd = os.open(os.path.join(folder, self.me), os.O_RDWR | os.O_CREAT, 0o600)

    def _others_busy(self) -> bool:
        for entry in os.listdir(self.folder):
            if entry == self.me:
                continue
            try:
                fd = os.open(os.path.join(self.folder, entry), os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: fails while its owner runs
            except OSError:
                return True
            finally:
                os.close(fd)  # releases the probe
        return False

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # first: two instances starting together both see the other
        torch.set_num_threads(self.shared if self._others_busy() else self.alone)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class TritonPythonModel:
    """One instance per ``instance_group`` count: load the tail once, run batches on it."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config.get("name", "tail")
        device = _param(config, "device", "cpu")
        if device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        self.device = torch.device(device)
        threads = int(_param(config, "threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.cores: Any = contextlib.nullcontext()
        alone = int(os.environ.get("VEIL_THREADS_ALONE", "0") or 0)
        folder = os.environ.get("VEIL_CORES_DIR")
        if folder and threads > 0 and alone > threads and self.device.type == "cpu":
            self.cores = _Cores(folder, self.name, alone, threads)
        self.max_batch = int(config.get("max_batch_size", 0))
        # names, rank and dtypes from config.pbtxt (written from the transform's wire and output specs)
        (spec,) = config["input"]
        self.input, self.rank = spec["name"], len(spec.get("dims", [])) + 1
        self.outputs = [(o["name"], NUMPY_TYPES.get(o["data_type"], np.float32)) for o in config["output"]]
        self.record_dir = os.environ.get("VEIL_RECORD_DIR") or None
        self.record_left = [
            int(os.environ.get("VEIL_RECORD_MAX_BYTES", 1 << 30)),
            int(os.environ.get("VEIL_RECORD_MAX_FILES", 10_000)),
        ]
        path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILE)
        module = torch.jit.load(path, map_location=self.device).eval()
        if _param(config, "freeze", "true").lower() != "false":
            with contextlib.suppress(RuntimeError):  # a frozen tail has nothing left to fold
                module = torch.jit.freeze(module)  # BatchNorm folded into the convolutions
        self.tail = module

    def _record(self, array: np.ndarray) -> None:
        """Write atomically (a reader of ``record_dir`` never sees half an array), within the quota."""
        assert self.record_dir is not None
        size = array.nbytes + 128  # .npy header
        if size > self.record_left[0] or self.record_left[1] < 1:
            print(
                f"veil: record quota reached in {self.name}: no more activations are recorded "
                "(raise --record-max-mb / --record-max-files, or empty the folder and restart)",
                file=sys.stderr,
                flush=True,
            )
            self.record_dir = None  # once: serving goes on without recording
            return
        self.record_left[0] -= size
        self.record_left[1] -= 1
        fd, tmp = tempfile.mkstemp(dir=self.record_dir, prefix=".part-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, os.path.join(self.record_dir, f"{self.name}-{uuid.uuid4().hex}.npy"))

    def execute(self, requests: list[Any]) -> list[Any]:
        answers: dict[int, Any] = {}
        arrays: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            # Triton's frontend has checked name, dtype and shape; the values are ours to check
            array = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            if array.ndim != self.rank or not 1 <= array.shape[0] <= (self.max_batch or array.shape[0]):
                answers[i] = _invalid(f"input {self.input!r}: batch size must be 1..{self.max_batch}")
                continue
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                answers[i] = _invalid(f"input {self.input!r} contains NaN or Inf values")
                continue
            if self.record_dir is not None:
                self._record(array)
            arrays.append((i, array))
        if arrays:
            batch = torch.from_numpy(np.concatenate([a for _, a in arrays]))
            batch = batch.to(self.device)
            if batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with self.cores, torch.inference_mode():
                leaves = _leaves(self.tail(batch))
            if len(leaves) != len(self.outputs):
                got, want = len(leaves), len(self.outputs)
                raise pb_utils.TritonModelException(f"{self.name}: tail gave {got} outputs, not {want}")
            leaves = [t.float() if t.dtype == torch.bfloat16 else t for t in leaves]
            outputs = [t.cpu().numpy().astype(d, copy=False) for t, (_, d) in zip(leaves, self.outputs)]  # noqa: B905
            start = 0
            for i, array in arrays:
                end = start + array.shape[0]
                parts = [np.ascontiguousarray(o[start:end]) for o in outputs]
                names = [n for n, _ in self.outputs]
                tensors = [pb_utils.Tensor(n, o) for n, o in zip(names, parts)]  # noqa: B905 (3.8 stubs)
                answers[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = end
        return [answers[i] for i in range(len(requests))]
