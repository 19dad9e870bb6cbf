"""What a served tail takes and returns, read from a transform's meta, and the Triton config built from it.

One :class:`ServedSpec` describes a tail on the wire: its input (``INPUT__0``: dtype, shape without the
batch, which dims are dynamic, ``-1`` in Triton's ``dims``), its outputs (``OUTPUT__{i}`` per leaf of the
model's output pytree, in :func:`torch.utils._pytree.tree_flatten` order) and the two model names. FaceBoxes
keeps the reference design's contract (:data:`FACEBOXES`); a transform made by :func:`veil.protect` records
its own (``wire_spec``, ``output_spec`` and ``triton`` in ``transform.json``, read by :func:`spec_from_meta`).

The same spec writes ``config.pbtxt`` (:func:`config_text`), bounds the guards' message sizes
(:meth:`ServedSpec.max_body_bytes`) and checks what a client is about to send (:func:`check_wire`). No torch
import here: ``import veil`` and the CLI's ``--help`` stay fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import InputError, ServingError
from veil.serve.validate import (
    ACTIVATION_DIMS,
    BASE_MODEL,
    INPUT_NAME,
    LOC_DIMS,
    LOC_NAME,
    MAX_BATCH_SIZE,
    NOISY_MODEL,
    SCORES_DIMS,
    SCORES_NAME,
)

#: torch dtype name -> (config.pbtxt data_type, KServe wire datatype, numpy dtype).
DTYPES: dict[str, tuple[str, str, str]] = {
    "float32": ("TYPE_FP32", "FP32", "float32"),
    "float16": ("TYPE_FP16", "FP16", "float16"),
    "float64": ("TYPE_FP64", "FP64", "float64"),
    "int64": ("TYPE_INT64", "INT64", "int64"),
    "int32": ("TYPE_INT32", "INT32", "int32"),
    "int16": ("TYPE_INT16", "INT16", "int16"),
    "int8": ("TYPE_INT8", "INT8", "int8"),
    "uint8": ("TYPE_UINT8", "UINT8", "uint8"),
    "bool": ("TYPE_BOOL", "BOOL", "bool"),
}
_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "long": "int64", "int": "int32"}
_ALIASES |= {wire: name for name, (_, wire, _) in DTYPES.items()}
_ALIASES |= {cfg: name for name, (cfg, _, _) in DTYPES.items()}
#: ``kind`` in the meta of a transform made by :func:`veil.protect`.
GENERIC = "generic"
#: Headroom over a full batch for the request's JSON header (HTTP body, gRPC message).
BODY_HEADROOM = 1 << 20
#: Message bound when the input has dynamic dims (their size is not known in advance).
DYNAMIC_BODY_BYTES = 64 << 20


def dtype_name(dtype: Any) -> str:
    """Canonical torch dtype name ('float32') from 'torch.float32', 'FP32', 'TYPE_FP32', a dtype object."""
    name = str(dtype).removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise ServingError(f"dtype {dtype!r} cannot be served: use one of {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One tensor on the wire: name, dtype (torch name), dims without the batch (``-1`` = dynamic)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def config_type(self) -> str:
        return DTYPES[self.dtype][0]

    @property
    def wire_type(self) -> str:
        return DTYPES[self.dtype][1]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(DTYPES[self.dtype][2])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class ServedSpec:
    """A tail's contract: one input, its outputs (pytree leaves), the model names it is served under."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    base: str = BASE_MODEL
    noisy: str = NOISY_MODEL
    #: ``torch.utils._pytree.treespec_dumps`` of the model's output; None: a tuple of the leaves.
    treespec: str | None = None
    feature_axis: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def example_shape(self, batch: int = 1) -> tuple[int, ...]:
        """A concrete input shape (dynamic dims at the size recorded in ``extra['shape']``, else 1)."""
        shape = self.extra.get("shape") or [1 if d < 0 else d for d in self.input.dims]
        return (batch, *(int(s) for s in shape))

    def max_body_bytes(self, max_batch_size: int) -> int:
        """The largest request a guard lets through: a full binary batch plus headroom."""
        if any(d < 0 for d in self.input.dims):
            return DYNAMIC_BODY_BYTES
        size = max_batch_size * math.prod(self.input.dims) * self.input.numpy_dtype.itemsize
        return max(8 << 20, size + BODY_HEADROOM)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input.to_json(),
            "outputs": [o.to_json() for o in self.outputs],
            "models": {"base": self.base, "noisy": self.noisy},
            "treespec": self.treespec,
        }


#: FaceBoxes at 1024x1024 split after the RDCL: the reference design's names, shapes and models.
FACEBOXES = ServedSpec(
    input=TensorSpec(INPUT_NAME, "float32", ACTIVATION_DIMS),
    outputs=(TensorSpec(LOC_NAME, "float32", LOC_DIMS), TensorSpec(SCORES_NAME, "float32", SCORES_DIMS)),
)


def _dims(shape: Any, dynamic: Any, where: str) -> tuple[int, ...]:
    """Triton dims from a shape and its dynamic axes (a list of axes, or of booleans per axis)."""
    try:
        dims = [int(s) for s in shape]
        dyn = list(dynamic or [])
        if dyn and all(isinstance(d, bool) for d in dyn):
            axes = {i for i, d in enumerate(dyn) if d}
        else:
            axes = {int(d) % len(dims) for d in dyn}
    except (TypeError, ValueError, ZeroDivisionError):
        raise ServingError(f"{where}: bad shape {shape!r} / dynamic dims {dynamic!r}") from None
    return tuple(-1 if i in axes or d < 0 else d for i, d in enumerate(dims))


def _dynamic(entry: Mapping[str, Any]) -> Any:
    for key in ("dynamic", "dynamic_dims", "dynamic_axes"):
        if key in entry:
            return entry[key]
    return None


def is_generic(path: str | Path) -> bool:
    """Whether ``path`` is a transform directory made by :func:`veil.protect` (not a FaceBoxes one)."""
    try:
        meta = json.loads((Path(path) / "transform.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("kind") == GENERIC or "wire_spec" in meta)


def spec_from_meta(meta: Mapping[str, Any], where: str = "transform") -> ServedSpec:
    """The served contract a transform records; FaceBoxes' (no ``wire_spec``) is :data:`FACEBOXES`."""
    wire = meta.get("wire_spec")
    if wire is None:
        return FACEBOXES
    try:
        in_dims = _dims(wire["shape"], _dynamic(wire), f"{where}: wire_spec")
        in_type = dtype_name(wire.get("dtype", "float32"))
        spec_in = TensorSpec(str(wire.get("name", INPUT_NAME)), in_type, in_dims)
        out = meta.get("output_spec") or {}
        leaves = out.get("leaves", out.get("outputs")) if isinstance(out, Mapping) else out
        if not leaves:
            raise KeyError("output_spec leaves")
        outputs = []
        for i, leaf in enumerate(leaves):
            dyn = _dynamic(leaf)
            dims = _dims(leaf["shape"], dyn, f"{where}: output_spec")
            if dyn is None and any(d < 0 for d in in_dims):  # sizes may follow the dynamic input
                dims = tuple(-1 for _ in dims)
            outputs.append(TensorSpec(str(leaf.get("name", f"OUTPUT__{i}")), dtype_name(leaf["dtype"]), dims))
        names = meta.get("triton") or {}
        treespec = out.get("treespec") if isinstance(out, Mapping) else None
        if treespec is not None and not isinstance(treespec, str):
            treespec = json.dumps(treespec)
        return ServedSpec(
            input=spec_in,
            outputs=tuple(outputs),
            base=str(names.get("base", BASE_MODEL)),
            noisy=str(names.get("noisy", NOISY_MODEL)),
            treespec=treespec,
            feature_axis=int(wire.get("feature_axis", meta.get("feature_axis", 0)) or 0),
            extra={"shape": [int(s) for s in wire["shape"]]},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServingError(f"{where}: wire_spec/output_spec unreadable ({exc})") from None


def spec_from_config(cfg: Any, noisy: str | None = None, base: str | None = None) -> ServedSpec:
    """The contract a parsed ``config.pbtxt`` (tritonclient's ``ModelConfig``) declares."""
    from tritonclient.grpc import model_config_pb2 as mc

    def tensor(t: Any) -> TensorSpec:
        return TensorSpec(t.name, dtype_name(mc.DataType.Name(t.data_type)), tuple(int(d) for d in t.dims))

    if len(cfg.input) != 1:
        raise ServingError(f"model {cfg.name!r}: veil serves tails with one input, got {len(cfg.input)}")
    return ServedSpec(
        input=tensor(cfg.input[0]),
        outputs=tuple(tensor(t) for t in cfg.output),
        base=base or BASE_MODEL,
        noisy=noisy or cfg.name,
    )


def config_text(
    name: str,
    spec: ServedSpec = FACEBOXES,
    *,
    gpu: bool = False,
    max_batch_size: int = MAX_BATCH_SIZE,
    instances: int = 1,
    backend: str = "libtorch",
    max_queue_delay_us: int = 2000,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """``config.pbtxt`` for one tail, built as a ``ModelConfig`` protobuf so it always parses."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    platforms = {"libtorch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}
    if backend not in (*platforms, "python"):
        raise ServingError(f"unknown backend {backend!r}: choose one of libtorch, onnx, python")
    if not 1 <= max_batch_size <= 1024:
        raise ServingError(f"max_batch_size must be 1..1024, got {max_batch_size}")
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend == "python":
        cfg.backend = "python"
    else:
        cfg.platform = platforms[backend]
    dtype = mc.DataType.Value
    cfg.input.add(name=spec.input.name, data_type=dtype(spec.input.config_type), dims=list(spec.input.dims))
    for out in spec.outputs:
        cfg.output.add(name=out.name, data_type=dtype(out.config_type), dims=list(out.dims))
    preferred = sorted({b for b in (max_batch_size // 2, max_batch_size) if b > 1})
    cfg.dynamic_batching.preferred_batch_size.extend(preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=instances, kind=kind)
    params = dict(parameters or {})
    if backend == "libtorch":
        params.setdefault("INFERENCE_MODE", "true")
    if backend == "python":
        params.setdefault("device", "cuda" if gpu else "cpu")
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    if spec is FACEBOXES:
        header = (
            f"# veil tail '{name}': {INPUT_NAME} = split activation, {LOC_NAME} = box regressions,\n"
            f"# {SCORES_NAME} = softmax scores (background, face). Generated by veil.\n"
        )
    else:
        outs = ", ".join(spec.output_names)
        header = f"# veil tail '{name}': {spec.input.name} = split activation -> {outs}. Generated by veil.\n"
    return header + text_format.MessageToString(cfg)


def check_wire(x: np.ndarray, spec: TensorSpec, max_batch_size: int = MAX_BATCH_SIZE) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite batch of ``spec`` with 1 <= N <= max."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{spec.name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != spec.numpy_dtype:
        raise InputError(f"{spec.name}: expected {spec.wire_type}, got {x.dtype}")
    rank_ok = x.ndim == len(spec.dims) + 1
    fits = rank_ok and all(d < 0 or d == s for d, s in zip(spec.dims, x.shape[1:], strict=True))
    if not fits:
        want = ", ".join("*" if d < 0 else str(d) for d in spec.dims)
        raise InputError(f"{spec.name}: expected shape [N, {want}], got {list(x.shape)}")
    if not 1 <= x.shape[0] <= max_batch_size:
        raise InputError(f"{spec.name}: batch size must be 1..{max_batch_size}, got {x.shape[0]}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError(f"{spec.name}: contains NaN or Inf values")


def unflatten(leaves: list[Any], treespec: str | None) -> Any:
    """The model's own output structure from its leaves (a tuple where no treespec is recorded)."""
    if treespec is None:
        return leaves[0] if len(leaves) == 1 else tuple(leaves)
    from torch.utils import _pytree as pytree

    return pytree.tree_unflatten(leaves, pytree.treespec_loads(treespec))
