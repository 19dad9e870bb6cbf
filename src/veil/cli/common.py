"""Options and builders shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import typer

from veil.detect import Detector, PostProcess, build_detector
from veil.errors import VeilError

WeightsOpt = typer.Option(
    None, "--weights", "-w", help="FaceBoxes checkpoint (.pth); default: $VEIL_WEIGHTS.", show_default=False
)


def resolve_weights(weights: Path | None) -> Path:
    """``--weights`` or ``$VEIL_WEIGHTS``; a clear error when neither is set."""
    if weights is None:
        env = os.environ.get("VEIL_WEIGHTS")
        if not env:
            raise VeilError("no weights given: pass --weights PATH/FaceBoxes.pth or set VEIL_WEIGHTS")
        weights = Path(env)
    return weights


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def parse_size(
    size: int | None, resize: float | None
) -> tuple[tuple[int, int] | Literal["auto"] | None, float]:
    """``--resize`` keeps the image's own scale times the factor; ``--size`` fixes a square input;
    neither means "auto": the transform's training size, else the model's reference size (1024)."""
    if resize is not None:
        if resize <= 0:
            raise VeilError(f"--resize must be > 0, got {resize}")
        return None, resize
    if size is None:
        return "auto", 1.0
    if size < 32 or size % 32:
        raise VeilError(f"--size must be a positive multiple of 32, got {size}")
    return (size, size), 1.0


def cli_detector(
    weights: Path | None,
    *,
    model: str = "faceboxes",
    split: str | None = None,
    size: int | None = None,
    resize: float | None = None,
    threshold: float = 0.05,
    verify: bool = False,
    device: str = "cpu",
) -> Detector:
    """A local clean detector from CLI options."""
    fixed, factor = parse_size(size, resize)
    if fixed == "auto":
        fixed = (1024, 1024)
    return build_detector(
        resolve_weights(weights),
        model=model,
        split=split,
        size=fixed,
        resize=factor,
        post=PostProcess(threshold=threshold),
        device=device,
        verify=verify,
    )


def resolve_transform(transform: Path | None, alpha: float | None) -> Path | None:
    """``--transform DIR`` as given, or the shipped transform for ``--alpha`` (the reference knob)."""
    if transform is not None and alpha is not None:
        raise VeilError("give either --transform or --alpha, not both")
    if alpha is None:
        return transform
    from veil.artifact import shipped_transforms

    shipped = shipped_transforms()
    for value, path in shipped.items():
        if abs(value - alpha) < 1e-9:
            return path
    have = ", ".join(f"{a:g}" for a in sorted(shipped)) or "none"
    raise VeilError(
        f"no shipped transform for --alpha {alpha:g} (shipped: {have}); train one with `veil train`"
    )
