"""A Triton model repository for the tail: ``face_detection_base`` and ``face_detection_noisy``.

Each model is ``<name>/config.pbtxt`` + ``<name>/1/model.pt`` (TorchScript, ``pytorch_libtorch``), the
layout a user deploys on their own Triton. Output convention, shared with :mod:`veil.client`:
``OUTPUT__0`` = box regressions [N, 21824, 4] against the 1024x1024 priors, ``OUTPUT__1`` = softmax face
scores [N, 21824, 2] (background, face) — what the reference design calls the face scores, directly
usable by any Triton client. veil's client turns the scores back into logits with ``log`` (softmax of
``log p`` is ``p``), so local and remote decoding run the very same
:class:`veil.faceboxes.detect.PostProcess`.

Every TorchScript file is checked against the eager tail *after* a save/load round trip (the bytes that
are written are the ones checked), and the repository is assembled in a temporary folder that is renamed
into place: a reader never sees half a repository.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from veil.errors import ServingError, brief
from veil.models.adapter import fit_tail
from veil.serve.spec import FACEBOXES, ServedSpec, config_text
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

MODEL_FILENAME = "model.pt"
MANIFEST = "veil-export.json"
#: TorchScript is what Triton's libtorch backend loads; torch's deprecation notice does not apply here.
_JIT_WARNINGS = r".*torch\.jit.*deprecated.*"


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript announces its deprecation on every trace, save and load; veil still ships it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_WARNINGS, category=FutureWarning)
        yield


class ScoresTail(nn.Module):
    """The served tail: activation -> (box regressions, softmax scores [background, face])."""

    def __init__(self, tail: nn.Module) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.tail(x)
        return loc, torch.softmax(conf, dim=-1)


def scores_to_logits(scores: Tensor) -> Tensor:
    """Softmax scores -> logits whose softmax is the same scores (clamped: no ``-inf`` for a zero)."""
    return torch.log(scores.float().clamp_min(1e-38))


def noisy_tail_from_state_dict(base_tail: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``base_tail`` carrying the noise-trained weights (strict: every key must match)."""
    tail = fit_tail(copy.deepcopy(base_tail), state_dict)
    try:
        tail.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise ServingError(f"noisy tail weights do not fit the tail: {first}") from exc
    return tail.eval()


def build_tails(
    weights: str | Path,
    *,
    tail_state_dict: Mapping[str, Tensor] | None = None,
    model: str = "faceboxes",
    split: str | None = None,
) -> tuple[nn.Module, nn.Module]:
    """(base tail, noisy tail) from a checkpoint; without a trained noisy tail both are the base weights."""
    from veil.models import build_model, resolve_entry, split_model

    net = build_model(model, weights)
    _, base = split_model(net, split or resolve_entry(model).split or "")
    base.eval()
    noisy = noisy_tail_from_state_dict(base, tail_state_dict) if tail_state_dict is not None else base
    return base, noisy


#: Backends a repository can target: Triton's libtorch (TorchScript), ONNX Runtime, or its Python
#: backend running the TorchScript tail in the backend stub (what ``veil serve`` runs by default).
BACKENDS = ("libtorch", "onnx", "python")


def model_config_text(
    name: str,
    *,
    gpu: bool = False,
    max_batch_size: int = MAX_BATCH_SIZE,
    instances: int = 1,
    backend: str = "libtorch",
    max_queue_delay_us: int = 2000,
    parameters: Mapping[str, str] | None = None,
    spec: ServedSpec = FACEBOXES,
) -> str:
    """``config.pbtxt`` for one tail (FaceBoxes' contract unless ``spec`` says otherwise)."""
    return config_text(
        name,
        spec,
        gpu=gpu,
        max_batch_size=max_batch_size,
        instances=instances,
        backend=backend,
        max_queue_delay_us=max_queue_delay_us,
        parameters=parameters,
    )


def parse_model_config(path: str | Path) -> object:
    """A ``config.pbtxt`` parsed into tritonclient's ``ModelConfig`` (raises ServingError if malformed)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ServingError(f"{path}: not a valid Triton model config ({exc})") from exc


def _check_inputs() -> list[Tensor]:
    """A clean-looking (non-negative) and a noisy-looking batch; batch 2 checks the traced batch axis."""
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(1, *ACTIVATION_DIMS, generator=gen).relu() * 2,
        torch.randn(2, *ACTIVATION_DIMS, generator=gen) * 6,
    ]


def max_abs_diff(a: nn.Module, b: nn.Module, inputs: list[Tensor] | None = None) -> float:
    """Largest absolute difference between two served tails' outputs over the check inputs."""
    worst = 0.0
    with torch.inference_mode():
        for x in inputs if inputs is not None else _check_inputs():
            for p, q in zip(a(x), b(x), strict=True):
                if p.shape != q.shape:
                    return float("inf")
                worst = max(worst, (p - q).abs().max().item())
    return worst


def check_close(
    eager: nn.Module, other: nn.Module, what: str, atol: float, inputs: list[Tensor] | None = None
) -> float:
    """``max_abs_diff`` of a converted tail against its eager original; a ServingError past ``atol``."""
    diff = max_abs_diff(eager, other, inputs)
    if not diff < atol:
        raise ServingError(f"{what} tail differs from the PyTorch tail by {diff:.3g} (limit {atol:g})")
    return diff


def _trace(module: nn.Module, example: Tensor, freeze: bool = False) -> torch.jit.ScriptModule:
    """Trace (and optionally freeze) with TorchScript's deprecation notices silenced."""
    with _quiet_jit(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        return torch.jit.freeze(traced) if freeze else traced


def torchscript_bytes(tail: nn.Module, atol: float = 1e-4) -> tuple[bytes, float]:
    """Trace ``ScoresTail(tail)`` on CPU and return (file bytes, max abs diff vs eager after reload)."""
    eager = ScoresTail(copy.deepcopy(tail).float().cpu().eval()).eval()
    buf = io.BytesIO()
    traced = _trace(eager, torch.zeros(1, *ACTIVATION_DIMS))
    with _quiet_jit():
        torch.jit.save(traced, buf)
    data = buf.getvalue()
    reloaded = load_torchscript(io.BytesIO(data))
    return data, check_close(eager, reloaded, "TorchScript", atol)


def frozen_for_serving(tail: nn.Module, device: torch.device, atol: float = 1e-4) -> nn.Module:
    """A served tail traced and frozen (BatchNorm folded into the convolutions) for this process.

    The whole forward then runs in TorchScript's interpreter: no Python between operators, so the
    server's other Python threads (PyTriton's request and response loops) cannot stall it on the GIL.
    Checked against the eager tail before use, like an export.
    """
    if isinstance(tail, torch.jit.ScriptModule):
        return tail
    eager = tail.eval()
    example = torch.zeros(1, *ACTIVATION_DIMS, device=device).contiguous(memory_format=torch.channels_last)
    frozen = _trace(eager, example, freeze=True)
    check_close(eager, frozen, "frozen", atol, [x.to(device) for x in _check_inputs()])
    return frozen


def load_torchscript(
    path: str | Path | io.BytesIO, device: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """Load an exported ``model.pt`` (a served tail), from a file or from bytes just written."""
    with _quiet_jit():
        try:
            module = torch.jit.load(path if isinstance(path, io.BytesIO) else str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ServingError(f"{path}: cannot load TorchScript ({brief(exc, 120)})") from exc
    return module.eval()


@dataclass
class ExportResult:
    """Where the repository went and how closely each exported tail matches PyTorch."""

    path: Path
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)


def export_triton_repository(
    out: str | Path,
    base_tail: nn.Module,
    noisy_tail: nn.Module | None = None,
    *,
    gpu: bool = False,
    max_batch_size: int = MAX_BATCH_SIZE,
    instances: int = 1,
    overwrite: bool = False,
    atol: float = 1e-4,
    backend: str = "libtorch",
) -> ExportResult:
    """Write both tails as a Triton repository at ``out`` (atomically; ``noisy_tail`` defaults to base).

    ``backend``: TorchScript for ``pytorch_libtorch`` (default); ``"onnx"``: ``model.onnx`` files for
    ``onnxruntime_onnx`` (checked with ONNX Runtime); ``"python"``: TorchScript plus a ``model.py``
    that runs it inside Triton's Python backend (any Triton whose Python environment has torch).
    """
    from veil.serve.onnx import ONNX_FILENAME, onnx_bytes
    from veil.serve.python_backend import python_model_source

    if backend not in BACKENDS:
        raise ServingError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    onnx = backend == "onnx"
    to_bytes, filename = (onnx_bytes, ONNX_FILENAME) if onnx else (torchscript_bytes, MODEL_FILENAME)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists: pass --overwrite (overwrite=True) to replace it")
    result = ExportResult(path=out)
    files: dict[str, bytes] = {}
    for name, tail in ((BASE_MODEL, base_tail), (NOISY_MODEL, noisy_tail or base_tail)):
        data, diff = to_bytes(tail, atol)
        result.max_abs_diff[name] = diff
        result.sha256[name] = hashlib.sha256(data).hexdigest()
        files[f"{name}/1/{filename}"] = data
        if backend == "python":
            files[f"{name}/1/model.py"] = python_model_source()
        config = model_config_text(
            name, gpu=gpu, max_batch_size=max_batch_size, instances=instances, backend=backend
        )
        files[f"{name}/config.pbtxt"] = config.encode()
    manifest = {
        "format": "veil-triton-repository/1",
        "models": {
            n: {"sha256": result.sha256[n], "max_abs_diff": result.max_abs_diff[n]}
            for n in files_models(files)
        },
        "outputs": {LOC_NAME: "box regressions", SCORES_NAME: "softmax scores (background, face)"},
        "instance_kind": "KIND_GPU" if gpu else "KIND_CPU",
        "backend": backend,
    }
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    _write_tree_atomically(out, files)
    return result


def files_models(files: Mapping[str, bytes]) -> list[str]:
    """Model names present in a {relative path: bytes} repository listing."""
    return sorted({p.split("/")[0] for p in files if p.endswith((MODEL_FILENAME, ".onnx"))})


def _write_tree_atomically(out: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a temporary sibling folder, then rename it to ``out`` (old one removed after)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for rel, data in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        tmp.chmod(0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_repository(
    path: str | Path, device: str | torch.device = "cpu"
) -> dict[str, tuple[object, torch.jit.ScriptModule]]:
    """{model name: (parsed config, TorchScript tail)} for both veil models of a repository, checked."""
    path = Path(path)
    if not path.is_dir():
        raise ServingError(f"model repository not found: {path} (create one with `veil export triton`)")
    models: dict[str, tuple[object, torch.jit.ScriptModule]] = {}
    for name in (BASE_MODEL, NOISY_MODEL):
        cfg_path, pt_path = path / name / "config.pbtxt", path / name / "1" / MODEL_FILENAME
        if (path / name / "1" / "model.onnx").is_file():
            raise ServingError(
                f"{path / name}: an ONNX repository is for your own Triton (onnxruntime backend); "
                "`veil serve` takes a TorchScript one (`veil export triton` without --onnx)"
            )
        if not cfg_path.is_file() or not pt_path.is_file():
            raise ServingError(f"{path / name}: expected config.pbtxt and 1/{MODEL_FILENAME}")
        cfg = parse_model_config(cfg_path)
        _check_config(cfg, name, cfg_path)
        models[name] = (cfg, load_torchscript(pt_path, device))
    return models


def _check_config(cfg: object, name: str, where: Path) -> None:
    """The served contract must be the one the client speaks."""
    got_in = [(t.name, tuple(t.dims)) for t in cfg.input]  # type: ignore[attr-defined]
    got_out = sorted((t.name, tuple(t.dims)) for t in cfg.output)  # type: ignore[attr-defined]
    want_out = sorted([(LOC_NAME, LOC_DIMS), (SCORES_NAME, SCORES_DIMS)])
    if cfg.name != name or got_in != [(INPUT_NAME, ACTIVATION_DIMS)] or got_out != want_out:  # type: ignore[attr-defined]
        raise ServingError(f"{where}: config does not match veil's {name} contract ({got_in} -> {got_out})")
