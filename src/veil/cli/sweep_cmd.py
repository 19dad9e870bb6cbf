"""``veil sweep``: accuracy per alpha — FaceBoxes trains a transform per alpha and measures AP; another
task evaluates its shipped (or given) transforms with its own evaluator."""

from __future__ import annotations

from pathlib import Path

import typer

from veil.cli.checks import check_size, check_writable
from veil.cli.common import ModelOpt, ThreadsOpt, TilesOpt, WeightsOpt, resolve_model_option, set_threads
from veil.cli.train_cmd import check_alpha, train_config
from veil.errors import VeilError


def sweep(
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    images: list[Path] = typer.Option(
        [], "--images", "-i", help="FaceBoxes: unlabeled training photos; repeatable (required)."
    ),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="FaceBoxes: FDDB/WIDER folder to measure AP on (required); another task: what its evaluator "
        "reads (optional for breast-cancer-mlp).",
    ),
    part: str = typer.Option("all", help="Measure on all of --dataset or its train/test half."),
    alphas: str = typer.Option(
        "0.05,0.1,0.2,0.4,0.6,0.8,0.9,0.95", help="FaceBoxes: comma-separated alphas to train."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (transforms + table + plot)."),
    transform: list[Path] = typer.Option(
        [],
        "--transform",
        "-t",
        help="Another task: transform directories to evaluate (repeatable; default: its shipped ones).",
    ),
    scenes: list[Path] = typer.Option([], "--scenes", help="Real scenes to crop from; repeatable."),
    split: str = typer.Option("inception3", help="Split point."),
    train_tail: bool = typer.Option(True, "--train-tail/--noise-only", help="Fine-tune the tail jointly."),
    granularity: str = typer.Option("element", help="element, channel or conditional."),
    steps: int = typer.Option(400, min=1, help="Steps per transform."),
    samples: int = typer.Option(256, min=1, help="Training samples per transform."),
    size: int = typer.Option(1024, callback=check_size, help="Input size, a multiple of 32."),
    draws: int | None = typer.Option(
        None, min=1, help="Noise draws per measurement (default: 3 for FaceBoxes' AP, 5 for other tasks)."
    ),
    tiles: int = TilesOpt,
    threads: int | None = ThreadsOpt,
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train (or reuse) a transform per alpha and write table.md, table.csv, accuracy_vs_alpha.png."""
    from veil.faceboxes.data import load_dataset
    from veil.sweep import evaluate_transform, to_markdown, write_report
    from veil.training import train as run

    check_writable(out, "--out")
    set_threads(threads)
    choice = resolve_model_option(model, weights)
    if not choice.faceboxes:  # another task: its shipped (or --transform) transforms, its own evaluator
        from veil.cli.sweep_generic import sweep_task

        sweep_task(choice, transform, dataset, part, draws or 5, out, quiet)
        return
    if not images or dataset is None or transform:
        raise VeilError(
            "veil sweep of FaceBoxes trains a transform per alpha: it needs --images (training photos) and "
            "--dataset (FDDB/WIDER), and takes no --transform"
        )
    draws = draws or 3
    try:
        values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise VeilError(f"--alphas must be comma-separated numbers, got {alphas!r}") from None
    for a in values:
        check_alpha(a)
    w = choice.require_faceboxes("sweep")
    data = load_dataset(dataset).part(part)
    rows = [evaluate_transform(w, None, data, 1, tiles=tiles)]
    for a in values:
        target = out / f"alpha-{a:g}"
        if not (target / "transform.json").is_file():
            cfg = train_config(
                w,
                images,
                scenes,
                a,
                granularity,
                split=split,
                train_tail=train_tail,
                steps=steps,
                samples=samples,
                input_size=size,
            )
            run(cfg, target, progress=not quiet)
        rows.append(evaluate_transform(w, target, data, draws, clean_ap=rows[0].ap, tiles=tiles))
    title = (
        f"FaceBoxes, split {split}{' + tail' if train_tail else ''}, {data.name} ({len(data.images)} images)"
    )
    title += f", {tiles}x{tiles} tiles + full frame" if tiles > 1 else ""
    write_report(rows, out, title, {"dataset": str(dataset), "draws": draws, "tiles": tiles})
    typer.echo(to_markdown(rows, title))
