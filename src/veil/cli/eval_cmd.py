"""``veil eval``: accuracy on FDDB-style data, printed like the reference design's job log."""

from __future__ import annotations

from pathlib import Path

import typer

from veil.cli.common import WeightsOpt, cli_detector, set_threads
from veil.errors import VeilError

app = typer.Typer(help="Evaluate a detector on an FDDB or WIDER FACE folder.", invoke_without_command=True)


def _parse_folds(folds: str | None) -> list[int] | None:
    if not folds:
        return None
    try:
        return [int(f) for f in folds.split(",") if f.strip()]
    except ValueError:
        raise VeilError(f"--folds must be comma-separated integers like 1,6, got {folds!r}") from None


def _print_result(result: object, json_out: Path | None) -> None:
    from veil.eval.report import EvalResult, format_tr_results

    assert isinstance(result, EvalResult)
    numeric = all(k.isdigit() for k in result.folds)
    typer.echo(format_tr_results(result.folds, dataset="FDDB" if numeric else "WIDER"))
    line = f"pooled AP: {result.pooled_ap:.4f} over {result.images} images, {result.faces} faces"
    if result.roc:
        line += f"; FDDB TPR@1000FP: {result.roc['tpr_at_1000']['discrete']:.4f} (discrete)"
    typer.echo(line)


@app.callback()
def eval_main(
    ctx: typer.Context,
    dataset: Path | None = typer.Option(None, "--dataset", "-d", help="FDDB or WIDER FACE root folder."),
    weights: Path | None = WeightsOpt,
    folds: str | None = typer.Option(None, help="FDDB folds to use, e.g. 1,6 (default: all present)."),
    size: int = typer.Option(1024, help="Fixed square input size (the reference design's 1024)."),
    resize: float | None = typer.Option(None, help="Keep each image's scale times this factor instead."),
    threshold: float = typer.Option(0.05, help="Score threshold before NMS."),
    batch_size: int = typer.Option(1, help="Images per forward pass."),
    skip_missing: bool = typer.Option(False, help="Skip (and report) images whose files are missing."),
    ignore_invalid: bool = typer.Option(
        False, help="WIDER FACE: faces flagged invalid count neither way (default: all boxes count)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write results (and predictions) as JSON."),
    split: str | None = typer.Option(
        None, help="Split point (accuracy does not depend on it without noise)."
    ),
    verify: bool = typer.Option(False, help="Check the weights against SHA256SUMS."),
    threads: int | None = typer.Option(None, help="CPU threads for PyTorch."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Per-fold AP (the reference design's log), pooled AP and the official FDDB ROC."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        raise VeilError(
            "missing --dataset: pass an FDDB root (FDDB-folds/ + originalPics/) or a WIDER FACE root"
        )
    from veil.data import load_dataset
    from veil.eval.runner import evaluate, write_part

    set_threads(threads)
    data = load_dataset(dataset, folds=_parse_folds(folds), skip_missing=skip_missing)
    if data.missing:
        typer.echo(
            f"skipped {len(data.missing)} images with missing files (first: {data.missing[0]})", err=True
        )
    detector = cli_detector(
        weights, split=split, size=size, resize=resize, threshold=threshold, verify=verify
    )
    result, preds = evaluate(
        data, detector.detect, batch_size=batch_size, progress=not quiet, use_ignore=ignore_invalid
    )
    _print_result(result, json_out)
    if json_out is not None:
        meta = {"dataset": str(dataset), "weights": str(weights), "size": size, "resize": resize}
        write_part(json_out, preds, result, meta)


@app.command("merge")
def merge(
    parts: list[Path] = typer.Argument(..., help="Part files written by `veil eval --json`."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the merged result as JSON."),
) -> None:
    """Merge sharded results; prints the same lines as an unsharded run."""
    from veil.eval.report import write_json_atomic
    from veil.eval.runner import read_parts, summarize

    preds, seconds = read_parts(parts)
    result = summarize(preds, seconds=seconds)
    _print_result(result, json_out)
    if json_out is not None:
        write_json_atomic(json_out, result.to_json())
