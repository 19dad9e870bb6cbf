"""Loading checkpoints safely: tensors only, known layouts, checksums on request.

A checkpoint is data, never code, so everything goes through ``torch.load(weights_only=True)``. Every
failure becomes one :class:`CheckpointError` line that names the file, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from veil.errors import CheckpointError, brief

KeyMap = Callable[[str], str]

#: What torch.save writes: a zip archive (PyTorch >= 1.6), or a legacy pickle (protocol 2 to 5).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed so large checkpoints do not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(path: Path, sums_file: Path | None = None) -> str | None:
    """Look ``path`` up in a ``SHA256SUMS`` file (by default the nearest one in a parent folder)."""
    candidates = [sums_file] if sums_file else [p / "SHA256SUMS" for p in path.resolve().parents[:3]]
    for sums in candidates:
        if sums is None or not sums.is_file():
            continue
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and (sums.parent / parts[1].lstrip("*")).resolve() == path.resolve():
                return parts[0].lower()
    return None


def verify_sha256(path: Path, sums_file: Path | None = None) -> str:
    """Check ``path`` against its recorded SHA-256; returns the digest."""
    want = expected_sha256(path, sums_file)
    if want is None:
        raise CheckpointError(
            f"{path}: no SHA-256 recorded for it in a SHA256SUMS file; drop --verify or add one"
        )
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(
            f"{path}: SHA-256 mismatch (got {got[:12]}…, expected {want[:12]}…): re-download it"
        )
    return got


def check_weights_file(path: Path) -> Path:
    """``path`` if it is a file, else the one-line error (cheap: commands call it before slower checks)."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (pass --weights with the path to a .pth file)")
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` with one-line errors; unwraps ``{"state_dict": ...}``."""
    path = check_weights_file(Path(path))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (truncated download?)")
    with path.open("rb") as fh:
        head = fh.read(4)
    if not (head.startswith(ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS)):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (one is written by torch.save: a zip archive, or a pickle "
            f"of tensors in the legacy format; this file starts with {head!r}): check --weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc):  # a class or function: code, not tensors
            raise CheckpointError(
                f"{path}: refused, it holds more than tensors ({brief(first, 120)})"
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, corrupt pickle") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({brief(first, 120)})"
        ) from exc
    except (KeyError, IndexError, TypeError, AttributeError, struct.error, UnicodeDecodeError) as exc:
        # what the unpickler raises on bytes that only start like a pickle (e.g. "pop from empty list")
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, corrupt ({type(exc).__name__}: {brief(exc, 80)})"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
    return {str(k): v for k, v in obj.items()}


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: Path, key_maps: list[KeyMap]) -> None:
    """Load ``state`` with ``strict=True`` under the first key mapping whose keys all fit ``model``."""
    want = model.state_dict()
    best: tuple[int, set[str], set[str]] | None = None
    for key_map in key_maps:
        mapped = {key_map(k): v for k, v in state.items()}
        missing, unexpected = set(want) - set(mapped), set(mapped) - set(want)
        if not missing and not unexpected:
            bad = [k for k, v in mapped.items() if v.shape != want[k].shape]
            if bad:
                k = bad[0]
                raise CheckpointError(
                    f"{source}: {len(bad)} tensors have the wrong shape (e.g. {k}: "
                    f"{tuple(mapped[k].shape)} vs {tuple(want[k].shape)}): weights of another model variant"
                )
            model.load_state_dict(mapped, strict=True)
            return
        score = len(missing) + len(unexpected)
        if best is None or score < best[0]:
            best = (score, missing, unexpected)
    assert best is not None
    _, missing, unexpected = best
    example = sorted(missing or unexpected)[0]
    raise CheckpointError(
        f"{source}: not a checkpoint of this model ({len(missing)} missing, {len(unexpected)} unexpected "
        f"tensors, e.g. {example!r}): check --weights / --model"
    )
