"""``veil demo``: the main job — Triton + client, clean vs each shipped transform, on the FDDB sample."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from veil.cli.common import set_threads
from veil.errors import VeilError

SHARED = Path("..") / "shared"


def _default(path: Path | None, env: str, fallback: Path, what: str) -> Path:
    chosen = path or (Path(os.environ[env]) if os.environ.get(env) else fallback)
    if not chosen.exists():
        raise VeilError(f"{what} not found at {chosen}: pass it explicitly (or set ${env})")
    return chosen


def demo(
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Default: $VEIL_WEIGHTS or ../shared."),
    dataset: Path | None = typer.Option(None, "--dataset", "-d", help="Default: ../shared/data/fddb-sample."),
    transform: list[Path] = typer.Option([], "--transform", "-t", help="Default: veil's shipped transforms."),
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the side-by-side pictures."),
    draws: int = typer.Option(2, help="Noise draws per transform (AP is their mean)."),
    threads: int | None = typer.Option(2, help="CPU threads for PyTorch."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Start Triton, send the FDDB sample clean and obfuscated, print the table, write pictures, stop."""
    from veil.demo import format_table, run_demo

    set_threads(threads)
    w = _default(weights, "VEIL_WEIGHTS", SHARED / "weights/faceboxes/FaceBoxes.pth", "weights")
    d = _default(dataset, "VEIL_DATASET", SHARED / "data/fddb-sample", "dataset")
    rows = run_demo(w, d, out, transforms=transform or None, draws=draws, progress=not quiet)
    typer.echo("\n" + format_table(rows))
    typer.echo(f"\nside-by-side pictures (clean boxes | obfuscated boxes | what left the machine) -> {out}/")
