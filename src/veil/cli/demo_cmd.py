"""``veil demo``: the main job — Triton + client, clean vs each shipped transform, on the FDDB sample.

It runs anywhere: the FaceBoxes weights and the FDDB sample ship inside the package (``veil.assets``).
Nothing heavy is imported until the command runs, so ``veil demo --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path

import typer

from veil.cli.common import ModelOpt
from veil.errors import VeilError


def _mask_demo(
    dataset: Path | None,
    transforms: list[Path],
    out: Path,
    threads: int | None,
    max_images: int,
    weights: Path | None,
) -> None:
    """``--task mask-compliance``: the whole confidential pipeline (veil.demo_mask)."""
    from veil.cli.checks import check_writable
    from veil.cli.common import set_threads
    from veil.demo_mask import default_dataset, format_table, run_mask_demo

    if weights is not None or len(transforms) > 2:
        raise VeilError(
            "--task mask-compliance uses the shipped FaceBoxes weights; --transform takes at most two "
            "directories (a FaceBoxes transform, then a mask-compliance one)"
        )
    root = dataset or default_dataset()
    if not (root / "annotations").is_dir():
        raise VeilError(f"{root}: no mask-scenes data (annotations/) there: pass --dataset MASK_SCENES_ROOT")
    check_writable(out, "--out")
    set_threads(threads)
    fb = transforms[0] if transforms else None
    mask = transforms[1] if len(transforms) > 1 else None
    results = run_mask_demo(root, out, max_images=max_images, faceboxes_transform=fb, mask_transform=mask)
    typer.echo("\n" + format_table(results))
    typer.echo(f"\npictures (clean | private: boxes coloured by class | what left the machine) -> {out}/")


def _tabular_demo(transforms: list[Path], out: Path, threads: int | None, weights: Path | None) -> None:
    """``--task breast-cancer-mlp``: the test rows' releases through Triton (veil.demo_tabular)."""
    from veil.cli.checks import check_writable
    from veil.cli.common import set_threads
    from veil.demo_tabular import report, run_tabular_demo

    if weights is not None or len(transforms) > 1:
        raise VeilError(
            "--task breast-cancer-mlp uses the shipped breast-cancer weights; --transform takes at most one "
            "directory (a breast-cancer transform)"
        )
    check_writable(out, "--out")
    set_threads(threads)
    result = run_tabular_demo(out, transform=transforms[0] if transforms else None)
    typer.echo("\n" + report(result))
    typer.echo(f"\npicture (recall clean vs private | what left the machine) -> {result.picture}")


def demo(
    task: str = typer.Option(
        "faceboxes",
        "--task",
        help="faceboxes: the FDDB sample clean vs each shipped transform. mask-compliance: street photos "
        "through FaceBoxes' private release, then each face crop's private release to the mask classifier "
        "(both tails on one Triton). breast-cancer-mlp: the tabular test rows' releases through Triton.",
    ),
    model: str = ModelOpt,
    weights: Path | None = typer.Option(
        None,
        "--weights",
        "-w",
        help="FaceBoxes checkpoint. Default: $VEIL_WEIGHTS, else the one veil ships (or --model's own).",
    ),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="FDDB or WIDER FACE folder. Default: $VEIL_DATASET, else the shipped "
        "FDDB sample (7 images, 11 faces). --task mask-compliance: the mask-scenes root "
        "(default $VEIL_SHARED/data/mask-scenes, else ../shared/data/mask-scenes).",
    ),
    transform: list[Path] = typer.Option(
        [],
        "--transform",
        "-t",
        help="Transform directory or shipped name (repeatable). Default: the shipped transforms of the "
        "default split, one per alpha.",
    ),
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the pictures."),
    draws: int = typer.Option(2, min=1, help="Noise draws per transform (AP is their mean)."),
    threads: int | None = typer.Option(2, min=1, help="CPU threads for PyTorch."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    max_images: int = typer.Option(4, min=1, help="--task mask-compliance: photos of the test half shown."),
) -> None:
    """Start Triton, send the FDDB sample clean and obfuscated, print the table, write pictures, stop."""
    chosen = task.strip().lower()
    if chosen not in ("faceboxes", "mask-compliance", "breast-cancer-mlp"):
        raise VeilError(f"--task must be faceboxes, mask-compliance or breast-cancer-mlp, got {task!r}")
    if chosen == "breast-cancer-mlp":
        _tabular_demo(transform, out, threads, weights)
        return
    if chosen == "mask-compliance":
        _mask_demo(dataset, transform, out, threads, max_images, weights)
        return
    from veil.assets import choose, default_weights, sample_dataset
    from veil.cli.checks import check_writable
    from veil.cli.common import resolve_model_option, resolve_transform, set_threads
    from veil.demo import format_table, run_demo
    from veil.faceboxes.shipped import shipped_by_name, shipped_transforms

    check_writable(out, "--out")
    set_threads(threads)
    if weights is not None or model.strip().lower() == "faceboxes":  # a missing path: choose's one line
        weights = choose(weights, "VEIL_WEIGHTS", default_weights, "weights")
    w = resolve_model_option(model, weights).require_faceboxes("demo")
    d = choose(dataset, "VEIL_DATASET", sample_dataset, "dataset")
    paths = [p for p in (resolve_transform(t, None) for t in transform) if p is not None]
    if not paths:
        shown = set(shipped_transforms().values())
        others = [name for name, path in shipped_by_name().items() if path not in shown]
        if others:  # another split at an alpha the table already has (the demo's model names are per alpha)
            typer.echo(f"not shown (another split): {', '.join(others)} — `veil demo -t NAME` shows one")
    rows = run_demo(w, d, out, transforms=paths or None, draws=draws, progress=not quiet)
    typer.echo("\n" + format_table(rows))
    typer.echo(
        "\npictures (clean | α: detections | what left the machine | what the shipped attacker rebuilds) "
        f"-> {out}/"
    )
