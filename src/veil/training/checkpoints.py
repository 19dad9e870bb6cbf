"""Start a training run from an existing transform, optionally with its release frozen.

What an attacker can recover depends only on what leaves the client: the head (with any fine-tuned
block) and the noise. The tail runs on the server and never changes what is sent. So a transform whose
release is frozen (``freeze_release``) keeps its privacy audit exactly, while its tail keeps learning to
read that release: accuracy can be bought back after the fact, for as many steps and from as much data as
the user can afford, without touching the privacy the audit measured.

Also the run's own bookkeeping: the work folder beside ``out`` and the checkpoint a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from veil.artifact import Transform, load_transform, release_digest
from veil.errors import TransformError
from veil.models.adapter import fit_tail
from veil.noise import NoiseTransform

if TYPE_CHECKING:
    from veil.training.config import TrainConfig


def check_source(cfg: TrainConfig, tr: Transform, released_shape: tuple[int, ...]) -> None:
    """Refuse a source transform whose split, noise or head does not match this run, with the fix."""
    where = f"--init {tr.path}"
    own_size = int((tr.meta.get("input_size") or [0])[0])
    mismatches = [
        ("split", tr.split, cfg.split, "--split"),
        ("granularity", tr.noise.granularity, cfg.granularity, "--granularity"),
        ("input size", own_size, cfg.input_size, "--size"),
        ("fine-tuned head", tr.head_state is not None, cfg.train_head, "--train-head"),
    ]
    if cfg.train_head:
        own_blocks = int(tr.meta.get("train", {}).get("head_blocks", 1))
        mismatches.append(("head blocks", own_blocks, cfg.head_blocks, "--head-blocks"))
    for what, theirs, ours, option in mismatches:
        if theirs != ours:
            raise TransformError(
                f"{where}: the transform has {what} {theirs!r} but this run asks for {ours!r}: "
                f"set {option} to match it"
            )
    if tuple(tr.noise.shape) != tuple(released_shape):
        raise TransformError(
            f"{where}: made for activations {tuple(tr.noise.shape)}, this run releases {released_shape}"
        )


def start_from(
    cfg: TrainConfig, head: nn.Module, tail: nn.Module, released_shape: tuple[int, ...]
) -> tuple[NoiseTransform, dict[str, object]]:
    """Load ``cfg.init`` into ``head`` (its fine-tuned block) and ``tail``; return its noise and provenance.

    With the release frozen, the provenance keeps the recipe that made it (``release_train``, carried
    through a chain of re-tunes), since this run's own ``train`` record only says how the tail was tuned.

    The returned noise keeps the source's cap, mask and OS-seeded sampling; it is trainable unless the
    release is frozen.
    """
    tr = load_transform(cfg.init, cfg.weights)
    check_source(cfg, tr, released_shape)
    if tr.head_state is not None:
        result = head.load_state_dict(tr.head_state, strict=False)
        if result.unexpected_keys:
            raise TransformError(
                f"--init {tr.path}: its head tensors do not fit this model "
                f"({', '.join(result.unexpected_keys[:3])}…)"
            )
    if tr.tail_state is not None:
        fit_tail(tail, tr.tail_state).load_state_dict(tr.tail_state)
    noise = tr.noise.train().requires_grad_(not cfg.freeze_release)
    earlier = tr.meta.get("init_from") or {}
    provenance: dict[str, object] = {
        "path": str(tr.path),
        "tensors_sha256": str(tr.meta.get("tensors_sha256", "")),
        "release_sha256": release_digest(tr),
    }
    if cfg.freeze_release:
        provenance["release_train"] = earlier.get("release_train") or tr.meta.get("train", {})
    if tr.meta.get("diagnostic"):  # scripts/scale_noise.py: whatever starts from it inherits the mark
        provenance["diagnostic"] = tr.meta["diagnostic"]
    return noise, provenance


RELEASE_LOG = "release_train_log.csv"


def carry_release_log(source: Path, out: Path) -> None:
    """Copy the loss/σ log of the run that made a frozen release next to the tuning run's own log."""
    for name in (RELEASE_LOG, "train_log.csv"):
        if (source / name).is_file():
            tmp = out / f".{RELEASE_LOG}.tmp"
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, out / RELEASE_LOG)
            return


# -- the run's bookkeeping: the work folder beside ``out``, the checkpoint in it ---------------------
@contextlib.contextmanager
def work_folder(out: Path) -> Iterator[Path]:
    """``.<out>.work`` beside ``out`` (checkpoint and log, so a rerun resumes). A run that fails before
    its first checkpoint leaves nothing behind: its log, the folder and any parent it created go."""
    work = out.with_name(f".{out.name}.work")
    created = [p for p in (work, *work.parents) if not p.exists()]
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not (work / "checkpoint.pt").is_file():  # nothing to resume from
            for log in work.glob("train_log*.csv"):
                log.unlink(missing_ok=True)
            for folder in created:  # deepest first; a folder another rank still uses stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def save_checkpoint(
    path: Path, step: int, module: nn.Module, opt: torch.optim.Optimizer, attacker: Any
) -> None:
    """The run's state at ``step``, written atomically (temp file, then rename)."""
    tmp = path.with_suffix(".tmp")
    state = {"step": step, "module": module.state_dict(), "optimizer": opt.state_dict()}
    if attacker is not None:
        state["attacker"] = attacker.state_dict()
    torch.save(state, tmp)
    os.replace(tmp, path)
