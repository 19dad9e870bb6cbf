"""``veil eval``: accuracy on FDDB-style data, printed like the reference design's job log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from veil.cli.checks import FloatOpt, check_writable
from veil.cli.common import (
    CaCertOpt,
    ExpectReleaseOpt,
    ModelOpt,
    ResizeOpt,
    SizeOpt,
    ThreadsOpt,
    TilesOpt,
    WeightsOpt,
    parse_size,
    remote_detector,
    resolve_model_option,
    resolve_transform,
    set_threads,
)
from veil.cli.keygen_cmd import StickyKeyOpt, read_sticky_key
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.cli.common import ModelChoice
    from veil.faceboxes.data.labels import LabeledDataset

app = typer.Typer(help="Evaluate a detector on an FDDB or WIDER FACE folder.", invoke_without_command=True)


def _parse_folds(folds: str | None) -> list[int] | None:
    if not folds:
        return None
    try:
        return [int(f) for f in folds.split(",") if f.strip()]
    except ValueError:
        raise VeilError(f"--folds must be comma-separated integers like 1,6, got {folds!r}") from None


def _print_result(result: object, json_out: Path | None) -> None:
    from veil.faceboxes.eval.report import EvalResult, format_tr_results

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
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    folds: str | None = typer.Option(None, help="FDDB folds to use, e.g. 1,6 (default: all present)."),
    part: str = typer.Option("all", help="all, or the train/test half (images a transform never saw: test)."),
    size: int | None = SizeOpt,
    resize: float | None = ResizeOpt,
    threshold: float = FloatOpt(0.05, help="Score threshold before NMS.", low=0, high=1),
    batch_size: int = typer.Option(1, min=1, help="Images per forward pass."),
    skip_missing: bool = typer.Option(False, help="Skip (and report) images whose files are missing."),
    ignore_invalid: bool = typer.Option(
        False, help="WIDER FACE: faces flagged invalid count neither way (default: all boxes count)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write results (and predictions) as JSON."),
    split: str | None = typer.Option(
        None, help="Split point (accuracy does not depend on it without noise)."
    ),
    transform: Path | None = typer.Option(
        None,
        "--transform",
        "-t",
        help="Transform directory, or a shipped transform's name (e.g. faceboxes-rdcl-alpha0.8): "
        "evaluate with noise.",
    ),
    alpha: float | None = FloatOpt(
        None,
        help="Use the shipped transform with this ALPHA at the default split (reference design); "
        "the other split's by name with --transform.",
        low=0,
        high=1,
        high_open=True,
    ),
    noisy: bool = typer.Option(
        False, "--noisy", help="Reference-design flag: with --alpha, add noise (implied)."
    ),
    tiles: int = TilesOpt,
    draws: int = typer.Option(
        0,
        min=0,
        show_default=False,
        help="Noise draws to average; 0 = auto: 3 with a transform, 1 without.",
    ),
    shard_index: int | None = typer.Option(
        None, min=0, help="This shard (default: $JOB_COMPLETION_INDEX, set by Kubernetes Indexed Jobs)."
    ),
    num_shards: int = typer.Option(1, min=1, help="Split the dataset's folds across this many shards."),
    server: str | None = typer.Option(
        None, help="Triton URL (host:port or http://, grpc://): run the tail there, head and noise here."
    ),
    allow_clean: bool = typer.Option(False, help="With --server and no transform: send clean activations."),
    expect_release: str | None = ExpectReleaseOpt,
    ca_cert: Path | None = CaCertOpt,
    sticky_key: Path | None = StickyKeyOpt,
    verify: bool = typer.Option(False, help="Check the weights against SHA256SUMS."),
    threads: int | None = ThreadsOpt,
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Per-fold AP (the reference design's log), pooled AP and the official FDDB ROC."""
    if ctx.invoked_subcommand is not None:
        return
    from veil.faceboxes.data import load_dataset
    from veil.faceboxes.detect import PostProcess
    from veil.faceboxes.eval.report import write_json_atomic
    from veil.faceboxes.eval.runner import evaluate_draws, write_part
    from veil.faceboxes.pipeline import load_pipeline
    from veil.faceboxes.tiles import TileGrid, tiled
    from veil.serve.validate import INPUT_SIZE

    check_writable(json_out, "--json", folder=False)
    key = read_sticky_key(sticky_key, server)
    missing = "missing --dataset: pass an FDDB root (FDDB-folds/ + originalPics/) or a WIDER FACE root"
    if dataset is None and model.strip().lower() == "faceboxes":
        raise VeilError(missing)
    choice = resolve_model_option(model, weights)
    if not choice.faceboxes:  # another task: its own evaluator (accuracy, balanced accuracy, ...)
        set_threads(threads)
        client = {"expect_release": expect_release, "ca_cert": ca_cert, "sticky_key": key}
        result = evaluate_task(choice, dataset, part, transform, alpha, server, draws, quiet, client)
        _print_task_result(result)
        if json_out is not None:
            from veil.faceboxes.eval.report import write_json_atomic

            task_meta = {"model": model, "dataset": None if dataset is None else str(dataset)}
            write_json_atomic(json_out, result | {"meta": task_meta})
        return
    w = choice.require_faceboxes("eval")
    if dataset is None:
        raise VeilError(missing)
    set_threads(threads)
    data = load_dataset(dataset, folds=_parse_folds(folds), skip_missing=skip_missing).part(part)
    if data.missing:
        typer.echo(
            f"skipped {len(data.missing)} images with missing files (first: {data.missing[0]})", err=True
        )
    data = _shard(data, shard_index, num_shards)
    transform = resolve_transform(transform, alpha)
    fixed, factor = parse_size(size, resize)
    if server is not None:
        detect = remote_detector(
            server,
            w,
            transform,
            allow_clean=allow_clean,
            threshold=threshold,
            expect_release=expect_release,
            ca_cert=ca_cert,
            sticky_key=key,
        )
        detect = tiled(detect, TileGrid(tiles=tiles), INPUT_SIZE)
    else:
        det = load_pipeline(
            w,
            transform,
            split=split,
            size=fixed,
            resize=factor,
            post=PostProcess(threshold=threshold),
            verify=verify,
        )
        detect = tiled(det.detect, TileGrid(tiles=tiles), det.size)
    n = draws or (3 if transform is not None else 1)
    if n > 1 and num_shards > 1:
        raise VeilError("--draws > 1 cannot be combined with sharding: use --draws 1 for shards")
    summary, preds = evaluate_draws(
        data, detect, draws=n, batch_size=batch_size, progress=not quiet, use_ignore=ignore_invalid
    )
    _print_result(summary.mean, json_out)
    if n > 1:
        p = summary.pooled
        typer.echo(
            f"pooled AP over {n} noise draws: {p.mean():.4f} ± {p.std(ddof=1):.4f} (min {p.min():.4f})"
        )
    if json_out is not None:
        meta = {"dataset": str(dataset), "weights": str(weights), "size": size, "resize": resize}
        meta["model"] = model
        meta["tiles"] = tiles
        meta["transform"] = None if transform is None else str(transform)
        if n > 1:
            write_json_atomic(json_out, summary.to_json() | {"meta": meta})
        else:
            write_part(json_out, preds, summary.mean, meta)


def evaluate_task(
    choice: ModelChoice,
    dataset: Path | None,
    part: str,
    transform: Path | None,
    alpha: float | None,
    server: str | None,
    draws: int,
    quiet: bool,
    client: dict[str, Any],
) -> dict[str, Any]:
    """``veil eval --model NAME`` for a model of another task: the evaluator its registry entry declares."""
    evaluate = choice.entry.evaluate
    if evaluate is None:
        raise VeilError(
            f"veil eval: {choice.spec} is a {choice.entry.task} model and declares no evaluator: register "
            "it with veil.register_model(..., evaluate=fn) (or an entry point whose ModelEntry sets evaluate)"
        )
    if transform is not None and alpha is not None:
        raise VeilError("give --transform or --alpha (a shipped transform), not both")
    return evaluate(
        choice.build(),
        dataset=dataset,
        part=part,
        transform=transform,
        alpha=alpha,
        server=server,
        draws=draws,
        progress=not quiet,
        **client,
    )


def _print_task_result(result: dict[str, Any]) -> None:
    """Scalar metrics one per line, then per-class values (``per_class``), then anything else nested."""
    for key, value in result.items():
        if isinstance(value, float):
            typer.echo(f"{key}: {value:.4f}")
        elif isinstance(value, int | str):
            typer.echo(f"{key}: {value}")
    for name, value in (result.get("per_class") or {}).items():
        typer.echo(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")


def _shard(data: LabeledDataset, index: int | None, num_shards: int) -> LabeledDataset:
    if num_shards < 1:
        raise VeilError(f"--num-shards must be >= 1, got {num_shards}")
    if num_shards == 1:
        return data
    if index is None:
        env = os.environ.get("JOB_COMPLETION_INDEX")
        if env is None:
            raise VeilError("--num-shards > 1 needs --shard-index (or $JOB_COMPLETION_INDEX)")
        index = int(env)
    if not 0 <= index < num_shards:
        raise VeilError(f"--shard-index must be in [0, {num_shards}), got {index}")
    return data.shard(index, num_shards)


@app.command("merge")
def merge(
    parts: list[Path] = typer.Argument(..., help="Part files written by `veil eval --json`."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the merged result as JSON."),
) -> None:
    """Merge sharded results; prints the same lines as an unsharded run."""
    from veil.faceboxes.eval.report import write_json_atomic
    from veil.faceboxes.eval.runner import read_parts, summarize

    check_writable(json_out, "--json", folder=False)

    preds, seconds = read_parts(parts)
    result = summarize(preds, seconds=seconds)
    _print_result(result, json_out)
    if json_out is not None:
        write_json_atomic(json_out, result.to_json())
