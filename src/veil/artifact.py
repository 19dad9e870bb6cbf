"""Transform artifacts: a directory with ``transform.safetensors`` and ``transform.json``.

The tensors (mu, rho, suppression mask, the sigma network of a conditional transform and, when trained,
the tail's and the head's weights) are stored as safetensors — data only, nothing executable. The JSON
records how the transform was made and three digests, all checked on loading:

- ``tensors_sha256``: the tensors file (a corrupt or edited file);
- ``meta_sha256``: every other field of the JSON (an edited σ bound, split, mask setting, input size, ...);
- ``release_sha256``: what decides the sent tensor's distribution — the *release spec* (model and head
  fingerprints, split, input size and normalisation, activation shape, σ bounds and floor, granularity,
  suppressed share; canonical JSON, :func:`release_spec`) together with the noise and fine-tuned head tensors.
  A privacy audit quotes it; ``veil tune-tail`` keeps it; a client can pin it (``expect_release``).

A transform made by :func:`veil.protect` for any model (``"kind": "generic"``, see
:mod:`veil.protection.store`) adds :data:`GENERIC_RELEASE_FIELDS` to its release spec (model fingerprint,
input, wire and output specs, task, alpha, feature axis) and may hold more files (the TorchScript tail),
whose SHA-256 its meta records.
FaceBoxes transforms have no ``kind``, so their release spec — and their recorded digests — stay as they were.

The digests catch corruption, accidental edits and a release that no longer matches its audit. They are not
signatures: whoever can rewrite the client's files can recompute them (pin ``release_sha256`` out of band).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from veil.errors import TransformError, VeilError, brief
from veil.files import follow_umask
from veil.models.checkpoint import sha256_file
from veil.noise import NoiseTransform

FORMAT = "veil-transform/2"
OLD_FORMATS = ("veil-transform/1",)
RELEASE_FORMAT = "veil-release/1"
TENSORS = "transform.safetensors"
META = "transform.json"
CONVERT = "python scripts/convert_transforms.py DIR"

#: The recorded fields that shape what a client sends: inside the release spec and so ``release_sha256``.
#: (The suppression mask itself is a release tensor; the threshold that made it is a training setting,
#: covered by ``meta_sha256``.)
RELEASE_FIELDS = (
    "model",
    "base_weights_sha256",
    "head_sha256",
    "split",
    "input_size",
    "mean_bgr",
    "activation_shape",
    "granularity",
    "smin",
    "smax",
    "sigma_floor",
    "suppressed_fraction",
)
#: Also in the release spec of a generic (:func:`veil.protect`) transform, i.e. one whose meta has
#: ``"kind": "generic"``; absent from FaceBoxes transforms' specs, so their digests are unchanged.
GENERIC_RELEASE_FIELDS = (
    "kind",
    "model_fingerprint",
    "input_spec",
    "wire_spec",
    "output_spec",
    "task",
    "alpha",
    "feature_axis",
)
GENERIC = "generic"


@dataclass
class Transform:
    """A loaded transform: the noise module, optional tail (and head) weights, and its metadata.

    ``head_state`` is set when training fine-tuned the head's last block: the client must then run
    this head, not the base model's, before adding the noise.
    """

    noise: NoiseTransform
    tail_state: dict[str, Tensor] | None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    head_state: dict[str, Tensor] | None = None

    @property
    def alpha(self) -> float:
        return float(self.meta.get("alpha", float("nan")))

    @property
    def split(self) -> str:
        return str(self.meta["split"])


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().contiguous().cpu()
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        h.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state-dict tensors (names, dtypes, shapes, bytes) in sorted-name order."""
    return _digest(dict(module.state_dict()))


def canonical_json(obj: Any) -> bytes:
    """The one byte form that is hashed: sorted keys, no whitespace, floats as Python writes them."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def release_tensors(noise: NoiseTransform, head_state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """What decides the released tensor's distribution: the noise and any fine-tuned head block."""
    tensors = {f"noise.{k}": v for k, v in noise.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in (head_state or {}).items()})
    return tensors


def release_spec(meta: dict[str, Any], noise: NoiseTransform | None = None) -> dict[str, Any]:
    """The recorded fields that shape what is sent (:data:`RELEASE_FIELDS`); ``noise``'s own σ bounds,
    granularity and shape replace the recorded ones, so a noise module altered in memory is caught too."""
    spec = {key: meta.get(key) for key in RELEASE_FIELDS}
    generic = meta.get("kind") == GENERIC
    if generic:
        spec.update({key: meta.get(key) for key in GENERIC_RELEASE_FIELDS})
    if noise is not None:
        spec.update(
            smin=noise.smin,
            smax=noise.smax,
            granularity=noise.granularity,
            activation_shape=list(noise.shape),
        )
        if generic or noise.feature_axis:  # a FaceBoxes transform's axis is 0 and not recorded
            spec["feature_axis"] = noise.feature_axis
    return {"format": RELEASE_FORMAT, **spec}


def _release_sha256(spec: dict[str, Any], tensors: dict[str, Tensor]) -> str:
    return hashlib.sha256(canonical_json({"spec": spec, "tensors_sha256": _digest(tensors)})).hexdigest()


def release_digest(tr: Transform) -> str:
    """SHA-256 of what the client releases: the release spec plus noise and fine-tuned head tensors.

    Two transforms with the same digest send identically distributed tensors, so one privacy audit covers
    both, e.g. a transform and its tail re-tuned with ``veil tune-tail`` (the server's tail is not in it).
    """
    return _release_sha256(release_spec(tr.meta, tr.noise), release_tensors(tr.noise, tr.head_state))


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 over every recorded field but ``meta_sha256`` itself."""
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != "meta_sha256"})).hexdigest()


def _head_fingerprint(
    meta: dict[str, Any], head_state: dict[str, Tensor] | None, weights: str | Path | None
) -> str | None:
    """The fingerprint of the head a client runs (base head at the split + fine-tuned block), or None
    when the base weights are not at hand (explicit ``weights``, else the ones the training recorded)."""
    from veil.models.checkpoint import sha256_file

    recorded = (meta.get("train") or {}).get("weights") if isinstance(meta.get("train"), dict) else None
    path = Path(weights) if weights is not None else Path(recorded) if recorded else None
    if path is None or not path.is_file() or not meta.get("split"):
        return None
    if meta.get("base_weights_sha256") and sha256_file(path) != meta["base_weights_sha256"]:
        return None
    from veil.models import build_model, split_model

    head, _ = split_model(build_model(str(meta.get("model", "faceboxes")), path), str(meta["split"]))
    if head_state:
        head.load_state_dict(head_state, strict=False)
    return state_fingerprint(head)


def _refuse_non_finite(out: Path, noise: NoiseTransform, tensors: dict[str, Tensor]) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad or not all(math.isfinite(v) for v in (noise.smin, noise.smax)):
        what = ", ".join(bad[:3]) or "smin/smax"
        raise TransformError(
            f"refusing to write {out}: {what} not finite (NaN or inf; training diverged): "
            "lower the learning rates and train again"
        )


def save_transform(
    out: str | Path,
    noise: NoiseTransform,
    meta: dict[str, Any],
    tail_state: dict[str, Tensor] | None = None,
    head_state: dict[str, Tensor] | None = None,
    *,
    weights: str | Path | None = None,
    head_sha256: str | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write the directory atomically (build it beside the target, then rename into place).

    ``weights`` (default: the ``train.weights`` the meta records, if it is the recorded base checkpoint)
    lets the head's fingerprint be recorded; ``head_sha256`` gives it directly (a model with no weights
    file). ``files`` (name -> bytes) are written into the directory too; the caller records their digests
    in ``meta``. Non-finite tensors are refused before anything is written.
    """
    from veil import __version__
    from veil.models.checkpoint import sha256_file

    out = Path(out)
    tensors = {f"noise.{k}": v.detach() for k, v in noise.state_dict().items()}
    for prefix, state in (("tail", tail_state), ("head", head_state)):
        for key, value in (state or {}).items():
            tensors[f"{prefix}.{key}"] = value.detach()
    _refuse_non_finite(out, noise, tensors)
    record = {k: v for k, v in meta.items() if k not in ("meta_sha256", "release_sha256", "release_spec")}
    record.update(
        {
            "format": FORMAT,
            "veil_version": __version__,
            "smin": noise.smin,
            "smax": noise.smax,
            "granularity": noise.granularity,
            "activation_shape": list(noise.shape),
            "has_tail": tail_state is not None,
            "has_head": head_state is not None,
            "suppressed_fraction": noise.suppressed_fraction,
            "mean_sigma": float(noise.mean_sigma().detach()),
            "sigma_floor": noise.sigma_floor(),
            "head_sha256": head_sha256 or _head_fingerprint(meta, head_state, weights),
        }
    )
    if "feature_axis" in meta or noise.feature_axis:
        record["feature_axis"] = noise.feature_axis
    record["release_sha256"] = _release_sha256(release_spec(record), release_tensors(noise, head_state))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        for name, data in (files or {}).items():
            if Path(name).name != name or name in (TENSORS, META):
                raise TransformError(f"cannot store a file named {name!r} in a transform directory")
            (tmp / name).write_bytes(data)
        record["tensors_sha256"] = sha256_file(tmp / TENSORS)
        record["meta_sha256"] = meta_digest(record)
        (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        for written in tmp.iterdir():  # safetensors writes 0600; a transform is a user output
            follow_umask(written)
        follow_umask(tmp, directory=True)  # mkdtemp made it 0700
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise TransformError(f"transform directory not found: {path} (train one with `veil train`)")
    meta_file = path / META
    if not meta_file.is_file() or not (path / TENSORS).is_file():
        raise TransformError(f"{path}: not a transform directory (needs {META} and {TENSORS})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise TransformError(f"{meta_file}: corrupt JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        why = type(exc).__name__
        raise TransformError(f"{meta_file}: unreadable JSON ({why}): restore the file") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in OLD_FORMATS:
        raise TransformError(f"{meta_file}: made by an older veil ({fmt}): convert it once with `{CONVERT}`")
    if not isinstance(meta, dict) or fmt != FORMAT:
        raise TransformError(f"{meta_file}: unknown format {fmt!r}")
    return meta


def _check_meta(meta_file: Path, meta: dict[str, Any]) -> None:
    if meta.get("meta_sha256") != meta_digest(meta):
        raise TransformError(
            f"{meta_file}: its fields do not match the recorded meta_sha256: the file was edited or is "
            "corrupt; restore it (a transform's settings cannot be changed by hand)"
        )


def _build_noise(path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> NoiseTransform:
    try:
        shape = tuple(int(s) for s in meta["activation_shape"])
        noise = NoiseTransform(
            shape,
            smin=meta["smin"],
            smax=meta["smax"],
            granularity=meta["granularity"],
            feature_axis=int(meta.get("feature_axis", 0)),
        )
    except (KeyError, TypeError, ValueError, VeilError) as exc:
        why = brief(exc, 120)
        raise TransformError(f"{path / META}: bad noise settings ({why})") from None
    try:
        noise.load_tensors(tensors, "noise.")
    except (KeyError, RuntimeError) as exc:
        why = brief(exc, 160)
        raise TransformError(f"{path}: noise tensors missing or of the wrong shape ({why})") from None
    return noise


def load_transform(
    path: str | Path,
    weights: str | Path | None = None,
    *,
    activation_shape: tuple[int, ...] | None = None,
    expect_release: str | None = None,
) -> Transform:
    """Load and verify a transform; ``weights`` (the base checkpoint) must be the one it was trained on.

    ``expect_release``: the ``release_sha256`` the client was audited with; any other release is refused.
    """
    path = Path(path)
    meta = _read_meta(path)
    digest = sha256_file(path / TENSORS)
    if digest != meta.get("tensors_sha256"):
        raise TransformError(
            f"{path / TENSORS}: SHA-256 does not match {META}: the file is corrupt or was edited"
        )
    if weights is not None:
        base = sha256_file(Path(weights)) if Path(weights).is_file() else None
        want = meta.get("base_weights_sha256")
        if base is not None and want and base != want:
            raise TransformError(
                f"{path}: trained for base weights {want[:12]}… ({meta.get('base_weights_name', '?')}), "
                f"but {weights} is {base[:12]}…: use the weights it was trained with or train a new transform"
            )
    try:
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise TransformError(f"{path / TENSORS}: unreadable ({brief(exc, 100)})") from None
    tail = {k.removeprefix("tail."): v for k, v in tensors.items() if k.startswith("tail.")} or None
    head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")} or None
    if bool(meta.get("has_head")) != (head is not None):
        raise TransformError(f"{path}: {META} and {TENSORS} disagree on whether a trained head is stored")
    _check_meta(path / META, meta)
    noise = _build_noise(path, meta, tensors)
    if activation_shape is not None and tuple(activation_shape) != noise.shape:
        raise TransformError(
            f"{path}: made for activations {noise.shape}, but this pipeline produces "
            f"{tuple(activation_shape)} (different split point or input size)"
        )
    tr = Transform(
        noise=noise.eval().requires_grad_(False), tail_state=tail, meta=meta, path=path, head_state=head
    )
    if release_digest(tr) != meta.get("release_sha256"):
        raise TransformError(
            f"{path}: its release (noise settings, split, head, tensors) does not match the recorded "
            "release_sha256: the transform was altered; restore it from its release"
        )
    check_release(tr, expect_release, str(path))
    return tr


def check_release(tr: Transform, expect: str | None, where: str) -> None:
    """One-line refusal unless ``tr``'s release digest is ``expect`` (a full SHA-256 or a prefix of >= 12)."""
    if expect is None:
        return
    want = expect.strip().lower()
    if len(want) < 12 or any(c not in "0123456789abcdef" for c in want):
        raise TransformError(f"--expect-release needs a SHA-256 in hex (at least 12 digits), got {expect!r}")
    have = release_digest(tr)
    if not have.startswith(want):
        raise TransformError(
            f"{where}: release {have[:16]}… is not the audited release {want[:16]}…: "
            "refusing to send; use the transform the audit names"
        )
