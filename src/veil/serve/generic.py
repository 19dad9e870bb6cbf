"""Serving and exporting the tail of any model veil protected, from its transform directory alone.

A transform made by :func:`veil.protect` (``"kind": "generic"`` in ``transform.json``) holds everything the
server needs without the user's Python code: ``tail.pt`` (the TorchScript tail, its SHA-256 in the meta), the
wire spec (``INPUT__0``: dtype, shape, dynamic dims) and the output spec (one ``OUTPUT__{i}`` per leaf of the
model's output pytree). :func:`load_served_tail` verifies the directory (meta, tensors and release digests
via :func:`veil.artifact.load_transform`, then ``tail.pt``'s SHA-256), re-traces the tail so that it returns a
flat tuple of its leaves (what Triton's libtorch and Python backends take), and checks it against the spec.

Only the noisy model (``triton.noisy``, e.g. ``resnet_noisy``) is served and exported: the directory holds the
tail fitted to noisy releases, not the model's original tail, and a clean base model is exactly what a
protected deployment does not want to expose. FaceBoxes transforms keep both models (``--weights``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from veil.errors import ServingError, VeilError
from veil.serve.export import (
    MANIFEST,
    MODEL_FILENAME,
    ExportResult,
    _quiet_jit,
    _trace,
    _write_tree_atomically,
    load_torchscript,
)
from veil.serve.spec import GENERIC, ServedSpec, config_text, is_generic, spec_from_meta

TAIL_FILE = "tail.pt"
__all__ = ["GENERIC", "FlatTail", "export_triton", "is_generic", "load_served_tail"]


def _tail_digest(meta: dict[str, Any]) -> str | None:
    """The recorded SHA-256 of ``tail.pt`` (``tail_sha256``, or ``files``/``file_sha256`` maps)."""
    for key in ("tail_sha256", "tail_pt_sha256"):
        if isinstance(meta.get(key), str):
            return str(meta[key])
    for key in ("files", "file_sha256", "files_sha256"):
        table = meta.get(key)
        if isinstance(table, dict) and isinstance(table.get(TAIL_FILE), str):
            return str(table[TAIL_FILE])
    return None


class FlatTail(nn.Module):
    """A tail that returns the leaves of its output pytree as one flat tuple."""

    def __init__(self, tail: nn.Module) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(pytree.tree_leaves(self.tail(x)))


def _example(spec: ServedSpec, batch: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, spec.input.dtype)
    shape = spec.example_shape(batch)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, 2, shape, generator=gen).to(dtype)


def _check_against_spec(flat: nn.Module, raw: nn.Module, spec: ServedSpec, where: str) -> float:
    """Leaves' count, dtypes and fixed dims as the spec says; the flat tail equal to the raw one."""
    worst = 0.0
    with torch.inference_mode():
        for batch in (1, 2):
            x = _example(spec, batch, seed=batch)
            got = list(flat(x))
            want = pytree.tree_leaves(raw(x))
            if len(got) != len(spec.outputs) or len(want) != len(got):
                raise ServingError(
                    f"{where}: the tail returns {len(want)} tensors, output_spec names {len(spec.outputs)}"
                )
            for leaf, ref, out in zip(got, want, spec.outputs, strict=True):
                if str(leaf.dtype).removeprefix("torch.") != out.dtype:
                    raise ServingError(
                        f"{where}: {out.name} is {leaf.dtype}, its output_spec says {out.dtype}"
                    )
                dims = tuple(leaf.shape[1:])
                if leaf.shape[0] != batch or len(dims) != len(out.dims):
                    raise ServingError(f"{where}: {out.name} has shape {list(leaf.shape)}, spec {out.dims}")
                if any(d >= 0 and d != s for d, s in zip(out.dims, dims, strict=True)):
                    raise ServingError(f"{where}: {out.name} has shape {list(leaf.shape)}, spec {out.dims}")
                if leaf.dtype.is_floating_point:
                    worst = max(worst, float((leaf.float() - ref.float()).abs().max()))
    if not worst < 1e-4:
        raise ServingError(f"{where}: the re-traced tail differs from tail.pt by {worst:.3g}")
    return worst


def load_served_tail(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[ServedSpec, torch.jit.ScriptModule, dict[str, Any]]:
    """(spec, TorchScript tail returning a flat tuple, meta) of a generic transform directory, verified."""
    from veil.artifact import load_transform

    path = Path(path)
    try:
        tr = load_transform(path)
    except VeilError as exc:
        raise ServingError(str(exc)) from None
    meta = tr.meta
    if "wire_spec" not in meta:
        raise ServingError(
            f"{path}: a FaceBoxes transform (no wire_spec): serve it with `--weights W --transform`"
        )
    spec = spec_from_meta(meta, str(path))
    tail_file = path / TAIL_FILE
    if not tail_file.is_file():
        raise ServingError(
            f"{path}: no {TAIL_FILE} (the TorchScript tail): save the transform again with veil"
        )
    data = tail_file.read_bytes()
    want = _tail_digest(meta)
    if want is None:
        raise ServingError(f"{path}: transform.json records no SHA-256 for {TAIL_FILE}: refusing to serve it")
    if hashlib.sha256(data).hexdigest() != want:
        raise ServingError(
            f"{tail_file}: SHA-256 does not match transform.json: the file is corrupt or was edited"
        )
    raw = load_torchscript(io.BytesIO(data), "cpu")
    flat = _trace(FlatTail(raw).eval(), _example(spec, 1))
    _check_against_spec(flat, raw, spec, str(tail_file))
    return spec, flat.to(device), meta


def export_triton(
    transform: str | Path,
    out: str | Path,
    *,
    backend: str = "libtorch",
    gpu: bool = False,
    max_batch_size: int = 8,
    instances: int = 1,
    overwrite: bool = False,
) -> ExportResult:
    """Write a Triton repository serving a protected model's tail (its noisy model) at ``out``, atomically.

    ``backend``: ``libtorch`` (TorchScript, ``pytorch_libtorch``), ``python`` (TorchScript run by Triton's
    Python backend, as ``veil serve`` does) or ``onnx`` (``onnxruntime_onnx``, where the tail exports).
    ``config.pbtxt`` is derived from the transform's wire and output specs.
    """
    from veil.serve.python_backend import python_model_source

    if backend not in ("libtorch", "python", "onnx"):
        raise ServingError(f"unknown backend {backend!r}: choose one of libtorch, onnx, python")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists: pass --overwrite (overwrite=True) to replace it")
    spec, flat, meta = load_served_tail(transform)
    name = spec.noisy
    result = ExportResult(path=out)
    if backend == "onnx":
        data, diff, filename = _onnx(flat, spec), 0.0, "model.onnx"
    else:
        buf = io.BytesIO()
        with _quiet_jit():
            torch.jit.save(flat, buf)
        data, filename = buf.getvalue(), MODEL_FILENAME
        diff = _check_against_spec(load_torchscript(io.BytesIO(data)), flat, spec, f"{name} (saved)")
    result.max_abs_diff[name] = diff
    result.sha256[name] = hashlib.sha256(data).hexdigest()
    files = {f"{name}/1/{filename}": data}
    if backend == "python":
        files[f"{name}/1/model.py"] = python_model_source()
    cfg = config_text(
        name, spec, gpu=gpu, max_batch_size=max_batch_size, instances=instances, backend=backend
    )
    files[f"{name}/config.pbtxt"] = cfg.encode()
    manifest = {
        "format": "veil-triton-repository/1",
        "models": {name: {"sha256": result.sha256[name], "max_abs_diff": diff}},
        "transform": {"release_sha256": meta.get("release_sha256"), "split": meta.get("split")},
        "spec": spec.to_json(),
        "instance_kind": "KIND_GPU" if gpu else "KIND_CPU",
        "backend": backend,
    }
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    _write_tree_atomically(out, files)
    return result


def _onnx(flat: nn.Module, spec: ServedSpec) -> bytes:
    """The flat tail as ONNX (dynamic batch and dynamic dims), checked with ONNX Runtime."""
    import tempfile
    import warnings

    from veil.serve.onnx import OPSET, _runtime

    ort: Any = _runtime()
    names = [spec.input.name, *spec.output_names]
    axes = {spec.input.name: {0: "batch", **{i + 1: f"d{i}" for i, d in enumerate(spec.input.dims) if d < 0}}}
    for o in spec.outputs:
        axes[o.name] = {0: "batch", **{i + 1: f"{o.name}_d{i}" for i, d in enumerate(o.dims) if d < 0}}
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            file = Path(tmp) / "model.onnx"
            torch.onnx.export(
                flat,
                (_example(spec, 1),),
                file,
                dynamo=False,
                input_names=names[:1],
                output_names=names[1:],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
            data = file.read_bytes()
    except Exception as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ServingError(f"this tail does not export to ONNX ({why}): use --backend libtorch") from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _example(spec, 2, seed=5)
    got = session.run(None, {spec.input.name: x.numpy()})
    with torch.inference_mode():
        want = flat(x)
    worst = max(
        float((torch.from_numpy(g).float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True)
    )
    if not worst < 1e-4:
        raise ServingError(
            f"the ONNX tail differs from the TorchScript one by {worst:.3g}: use --backend libtorch"
        )
    return data
