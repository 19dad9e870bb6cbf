"""Transform artifacts: a directory with ``transform.safetensors`` and ``transform.json``.

The tensors (mu, rho, suppression mask, the sigma network of a conditional transform and, when trained,
the tail's and the head's weights) are stored as safetensors — data only, nothing executable. The JSON
records how the transform was made and the
SHA-256 of both the tensors file and the base weights, so loading refuses a corrupt file or a
transform meant for another model instead of silently producing garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from veil.errors import TransformError
from veil.models.checkpoint import sha256_file
from veil.noise import NoiseTransform

FORMAT = "veil-transform/1"
TENSORS = "transform.safetensors"
META = "transform.json"


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


def release_tensors(noise: NoiseTransform, head_state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """What decides the released tensor's distribution: the noise and any fine-tuned head block."""
    tensors = {f"noise.{k}": v for k, v in noise.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in (head_state or {}).items()})
    return tensors


def release_digest(tr: Transform) -> str:
    """SHA-256 of what the client releases (noise + fine-tuned head, not the server's tail).

    Two transforms with the same digest send identically distributed tensors, so one privacy audit covers
    both, e.g. a transform and its tail re-tuned with ``veil tune-tail``.
    """
    return _digest(release_tensors(tr.noise, tr.head_state))


def save_transform(
    out: str | Path,
    noise: NoiseTransform,
    meta: dict[str, Any],
    tail_state: dict[str, Tensor] | None = None,
    head_state: dict[str, Tensor] | None = None,
) -> Path:
    """Write the directory atomically (build it beside the target, then rename into place)."""
    from veil import __version__

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tensors = {f"noise.{k}": v.detach() for k, v in noise.state_dict().items()}
        for prefix, state in (("tail", tail_state), ("head", head_state)):
            for key, value in (state or {}).items():
                tensors[f"{prefix}.{key}"] = value.detach()
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        record = dict(meta)
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
                "tensors_sha256": sha256_file(tmp / TENSORS),
                "release_sha256": _digest(release_tensors(noise, head_state)),
            }
        )
        (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TransformError(
            f"{meta_file}: unknown format {meta.get('format') if isinstance(meta, dict) else None!r}"
        )
    return meta


def load_transform(
    path: str | Path,
    weights: str | Path | None = None,
    *,
    activation_shape: tuple[int, ...] | None = None,
) -> Transform:
    """Load and verify a transform; ``weights`` (the base checkpoint) must be the one it was trained on."""
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
        raise TransformError(f"{path / TENSORS}: unreadable ({str(exc)[:100]})") from None
    shape = tuple(int(s) for s in meta["activation_shape"])
    if activation_shape is not None and tuple(activation_shape) != shape:
        raise TransformError(
            f"{path}: made for activations {shape}, but this pipeline produces {tuple(activation_shape)} "
            "(different split point or input size)"
        )
    noise = NoiseTransform(shape, smin=meta["smin"], smax=meta["smax"], granularity=meta["granularity"])
    try:
        noise.load_tensors(tensors, "noise.")
    except (KeyError, RuntimeError) as exc:
        raise TransformError(
            f"{path}: noise tensors missing or of the wrong shape ({str(exc)[:120]})"
        ) from None
    tail = {k.removeprefix("tail."): v for k, v in tensors.items() if k.startswith("tail.")} or None
    head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")} or None
    if bool(meta.get("has_head")) != (head is not None):
        raise TransformError(f"{path}: {META} and {TENSORS} disagree on whether a trained head is stored")
    return Transform(
        noise=noise.eval().requires_grad_(False), tail_state=tail, meta=meta, path=path, head_state=head
    )


#: Transforms trained with this repository's code for ``FaceBoxes.pth`` ship inside the package.
SHIPPED_DIR = Path(__file__).resolve().parent / "transforms"


def shipped_transforms(include_all: bool = False) -> dict[float, Path]:
    """Shipped transform directories keyed by alpha: the default configuration (one per alpha).

    ``include_all`` adds the others; where two share an alpha, the default configuration's wins.
    """
    found: dict[float, Path] = {}
    for meta_file in sorted(SHIPPED_DIR.glob("*/transform.json")):
        record = json.loads(meta_file.read_text())
        default = bool(record.get("default", False))
        alpha = float(record["alpha"])
        if default or (include_all and alpha not in found):
            found[alpha] = meta_file.parent
    return found
