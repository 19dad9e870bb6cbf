"""Saving and loading a :class:`veil.protection.Protected`: veil's transform directory, generic fields added.

A directory written by ``Protected.save(dir)`` holds (written atomically by
:func:`veil.artifact.save_transform`):

- ``transform.safetensors``: ``noise.mu``, ``noise.rho``, ``noise.keep`` (bool mask as stored by the noise),
  ``tail.*`` (the fine-tuned tail's whole state dict) and, if fit trained the head, ``head.*``;
- ``tail.pt``: the tail as TorchScript (``torch.jit.trace`` on a release made from the input spec), so a
  server runs it with no user code: ``torch.jit.load("tail.pt")(release)`` gives the model's outputs;
- ``transform.json``: every field below plus veil's usual ones (``smin``, ``smax``, ``granularity``,
  ``activation_shape``, ``sigma_floor``, ``suppressed_fraction``, ``mean_sigma``, ``head_sha256``) and the
  digests ``tensors_sha256``, ``meta_sha256``, ``release_sha256`` (see :mod:`veil.artifact`).

Fields for a server (export / serve / client), all covered by ``meta_sha256``; the first eight are also in
the release spec and so in ``release_sha256``:

- ``kind``: ``"generic"``.
- ``model_fingerprint``: SHA-256 over the clean model's state-dict tensors (names, dtypes, shapes, bytes;
  sorted names: :func:`veil.artifact.state_fingerprint`); with ``protect(head=, tail=)`` over the state dict
  of ``ModuleDict(head=head, tail=tail)``.
- ``input_spec``: ``{"shape": [...] (no batch), "dtype": "float32", "normalisation": null | {...}}``.
- ``wire_spec``: what crosses the wire, the release: ``{"name": "INPUT__0", "dtype": "float32", "shape":
  [...] (no batch, as at save time), "feature_axis": k (index into shape), "dynamic": [indices into shape
  that may differ per request]}``. Per-channel noise accepts any size on every axis but the feature axis
  (per-element noise on none); :func:`save` keeps those where the tail also runs at twice the size
  (:func:`probe_dynamic`).
- ``output_spec``: ``{"treespec": torch.utils._pytree.treespec_dumps(...) of the model's output structure,
  "outputs": [{"name": "OUTPUT__i", "dtype": "float32", "shape": [...] (no batch), "dynamic": [dims that
  follow the wire's dynamic axes]}, ...]}`` (leaves in
  ``tree_flatten`` order; ``tree_unflatten(outputs, treespec_loads(treespec))`` rebuilds the structure).
- ``task`` (``"regression"``, ``"classification"`` or a callable's name), ``alpha``, ``feature_axis`` (the
  noise's, an index into ``activation_shape``).
- ``split``: the split point (``null`` for ``protect(head=, tail=)``), ``model``: the model class name.
- ``triton``: ``{"base": "<name>_base", "noisy": "<name>_noisy"}``, the Triton model names.
- ``tail_sha256``: SHA-256 of ``tail.pt``, or ``null`` with ``tail_torchscript_error`` when the tail cannot
  be traced (the directory then has no ``tail.pt``; only Python can serve it).
- ``fit``: how it was trained (steps, learning rates, loss, objective, suppression settings, first/last task
  loss).
- ``head_trained``: ``fit(train_head=True)`` fine-tuned the head; its weights are then ``head.*`` in
  ``transform.safetensors`` (inside ``release_sha256``) and ``head_sha256`` is the trained head's fingerprint.
- ``tail_adapter`` (only after :func:`veil.protection.tune_tail` with an adapter): ``{"kind": "conv1x1" |
  "linear", "features", "hidden", "axis"}``; the tail is then ``AdaptedTail`` (``tail.adapter.*`` +
  ``tail.tail.*``, :mod:`veil.protection.adapter`) and ``tail.pt`` includes the adapter.
- ``tail_tuning`` (only after :func:`veil.protection.tune_tail`): the tuning run and the source's
  ``release_sha256`` (equal to this one's).
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from veil.artifact import GENERIC, load_transform, save_transform, state_fingerprint
from veil.errors import InputError, TransformError, brief
from veil.models.adapter import fit_tail
from veil.protection.adapter import adapted

if TYPE_CHECKING:
    from veil.protection import Protected

WIRE_NAME = "INPUT__0"
TAIL_FILE = "tail.pt"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def input_spec(example: Tensor, normalisation: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "shape": list(example.shape[1:]),
        "dtype": dtype_name(example.dtype),
        "normalisation": normalisation,
    }


def example_from(spec: dict[str, Any], batch: int = 2) -> Tensor:
    """An input of the recorded shape and dtype (zeros for integers, e.g. token ids; seeded normal floats)."""
    dtype = getattr(torch, str(spec["dtype"]))
    shape = (batch, *(int(s) for s in spec["shape"]))
    if dtype.is_floating_point:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(shape, dtype=dtype)


def wire_spec(activation: Tensor, feature_axis: int, granularity: str) -> dict[str, Any]:
    shape = list(activation.shape[1:])
    dynamic = [i for i in range(len(shape)) if i != feature_axis] if granularity == "channel" else []
    return {
        "name": WIRE_NAME,
        "dtype": dtype_name(activation.dtype),
        "shape": shape,
        "feature_axis": feature_axis,
        "dynamic": dynamic,
    }


def output_spec(outputs: Any) -> dict[str, Any]:
    leaves, tree = pytree.tree_flatten(outputs)
    if not leaves or not all(isinstance(v, Tensor) for v in leaves):
        raise InputError(
            f"the model's outputs ({type(outputs).__name__}) must be tensors or tuples/lists/dicts of tensors"
        )
    return {
        "treespec": pytree.treespec_dumps(tree),
        "outputs": [
            {"name": f"OUTPUT__{i}", "dtype": dtype_name(v.dtype), "shape": list(v.shape[1:])}
            for i, v in enumerate(leaves)
        ],
    }


def probe_dynamic(tail: nn.Module, release: Tensor, wire: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Keep only the wire axes the tail really accepts at another size, and mark the output dims that follow.

    The noise alone would accept any size on every axis but the feature axis (per-channel noise); the tail
    may not (a flatten into a linear layer). Each candidate axis is tried at twice its size: where the tail
    fails, the axis is fixed; where it runs, every output dim that changed is recorded as dynamic
    (``outputs[...]["dynamic"]``), so Triton's config says ``-1`` exactly where sizes vary.
    """
    with torch.no_grad():
        base = [v.shape for v in pytree.tree_leaves(tail(release))]
        kept: list[int] = []
        follow: list[set[int]] = [set() for _ in base]
        for axis in wire["dynamic"]:
            bigger = torch.cat([release, release], dim=axis + 1)
            try:
                got = [v.shape for v in pytree.tree_leaves(tail(bigger))]
            except Exception:  # the tail needs this size: the axis stays fixed
                continue
            if len(got) != len(base):
                continue
            kept.append(axis)
            for i, (a, b) in enumerate(zip(base, got, strict=True)):
                follow[i].update(d - 1 for d in range(1, len(a)) if len(a) == len(b) and a[d] != b[d])
    wire["dynamic"] = kept
    for leaf, dims in zip(outputs["outputs"], follow, strict=True):
        leaf["dynamic"] = sorted(dims)


def triton_names(name: str) -> dict[str, str]:
    base = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_-") or "model"
    return {"base": f"{base}_base", "noisy": f"{base}_noisy"}


def pair_fingerprint(head: nn.Module, tail: nn.Module) -> str:
    return state_fingerprint(nn.ModuleDict({"head": head, "tail": tail}))


def _traced_tail(p: Protected) -> tuple[bytes | None, str | None]:
    """(TorchScript bytes of the tail, None) or (None, why it could not be traced)."""
    release = p.release(example_from(p.meta["input_spec"]))
    tail = p.tail.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(tail, release, strict=False, check_trace=False)
            want, got = pytree.tree_leaves(tail(release)), pytree.tree_leaves(traced(release))
        if len(want) != len(got) or not all(
            torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got, strict=True)
        ):
            return None, "the traced tail does not reproduce the tail's outputs"
    except Exception as exc:  # tracing fails in many ways (data-dependent control flow, odd outputs)
        return None, f"{type(exc).__name__}: {brief(exc, 200)}"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save "deprecated": Triton still loads it
        torch.jit.save(traced, buf)
    return buf.getvalue(), None


def save(p: Protected, out: str | Path) -> Path:
    """Write ``p`` as a transform directory (see the module docstring); returns its path."""
    meta = dict(p.meta)
    meta["kind"] = GENERIC
    meta["alpha"] = p.alpha
    meta["head_trained"] = p.head_trained
    wire, outputs = copy.deepcopy(meta["wire_spec"]), copy.deepcopy(meta["output_spec"])
    probe_dynamic(p.tail.eval(), p.release(example_from(meta["input_spec"])), wire, outputs)
    meta["wire_spec"], meta["output_spec"] = wire, outputs
    script, why = _traced_tail(p)
    files = {}
    if script is not None:
        files[TAIL_FILE] = script
        meta["tail_sha256"] = hashlib.sha256(script).hexdigest()
    else:
        warnings.warn(
            f"veil: the tail could not be traced to TorchScript ({why}); saved without {TAIL_FILE}",
            stacklevel=3,
        )
        meta["tail_sha256"], meta["tail_torchscript_error"] = None, why
    head_state = dict(p.head.state_dict()) if p.head_trained else None
    return save_transform(
        out,
        p.noise,
        meta,
        tail_state=dict(p.tail.state_dict()),
        head_state=head_state,
        head_sha256=state_fingerprint(p.head),
        files=files,
    )


def load(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    head: nn.Module | None = None,
    tail: nn.Module | None = None,
    expect_release: str | None = None,
) -> Protected:
    """Verify ``path`` and rebuild the protected model around ``model`` (or ``head``/``tail``)."""
    from veil.protection import protect

    path = Path(path)
    tr = load_transform(path, expect_release=expect_release)
    meta = tr.meta
    if meta.get("kind") != GENERIC:
        raise TransformError(
            f"{path}: a FaceBoxes transform, not one made by veil.protect: use `veil detect`"
        )
    have = state_fingerprint(model) if model is not None else None
    if model is None and head is not None and tail is not None:
        have = pair_fingerprint(head, tail)
    if have is None:
        raise TransformError(f"{path}: veil.load needs the model it was made for (or head= and tail=)")
    want = str(meta.get("model_fingerprint"))
    if have != want:
        raise TransformError(
            f"{path}: made for model {want[:12]}… but this model is {have[:12]}… (other weights or "
            "architecture): load it with the model it was protected from, or protect and fit this one"
        )
    if meta.get("tail_sha256"):
        file = path / TAIL_FILE
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != meta["tail_sha256"]:
            raise TransformError(
                f"{file}: missing or its SHA-256 does not match {path.name}'s meta: restore it"
            )
    wire = meta["wire_spec"]
    p = protect(
        model,
        split=meta.get("split"),
        alpha=float(meta["alpha"]),
        example=example_from(meta["input_spec"]),
        head=head,
        tail=tail,
        granularity=tr.noise.granularity,
        feature_axis=int(wire["feature_axis"]) + 1,
        task=str(meta.get("task", "regression")),
        smax=tr.noise.smax,
        normalisation=meta["input_spec"].get("normalisation"),
    )
    if tuple(p.noise.shape) != tuple(tr.noise.shape):
        raise TransformError(
            f"{path}: made for activations {tr.noise.shape}, this model gives {p.noise.shape} at its split"
        )
    p.noise = tr.noise
    if meta.get("tail_adapter"):  # veil.protection.tune_tail's adapter (AdaptedTail)
        p.tail = adapted(p.tail, meta["tail_adapter"])
    elif tr.tail_state and hasattr(p.tail, "adapter"):
        fit_tail(p.tail, tr.tail_state)  # a tail with its own adapter slot (FaceBoxes' tune-tail)
    p.tail.load_state_dict(tr.tail_state or {})
    if tr.head_state is not None:
        p.head.load_state_dict(tr.head_state)
        p.head_trained = True
    p.meta = dict(meta)
    return p.eval()
