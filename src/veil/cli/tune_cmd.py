"""``veil tune-tail``: keep a transform's release exactly, train its server-side tail further.

Privacy depends only on what the client sends (head and noise), so this buys accuracy back without
invalidating the transform's privacy audit: the output's ``release_sha256`` equals the source's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from veil.cli.checks import FloatOpt, check_writable
from veil.cli.common import ThreadsOpt, WeightsOpt, int_list, resolve_weights, set_threads
from veil.errors import VeilError

#: Options that decide the release: taken from the source transform, never from the command line.
RELEASE_OPTIONS = ("model", "split", "granularity", "train_head", "head_blocks", "input_size", "alpha")


def tune_config(source: Path, weights: Path, **overrides: Any) -> Any:
    """The source's training configuration with the release frozen and the given data/budget options."""
    from veil.artifact import load_transform
    from veil.training import TrainConfig

    tr = load_transform(source, weights)
    recorded = tr.meta.get("train")
    if not isinstance(recorded, dict):
        raise VeilError(f"{source}: transform.json records no training configuration; cannot tune its tail")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in recorded.items() if k in known}
    for key in ("init", "freeze_release", "adversary_reset", "device"):  # device: where this run is
        base.pop(key, None)
    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    if given.get("task", base.get("task")) != "mixed" and "label_weight" not in given:
        base.pop("label_weight", None)  # weighs only mixed's MultiBox term
    if given.get("task") == "multibox":  # supervised: boxes only, not the source's unlabeled photos
        base["images"], base["scenes"] = given.get("images", []), []
    base.update(given)
    base.update(
        {
            "weights": str(weights),
            "init": str(source),
            "freeze_release": True,
            "train_tail": True,
            "privacy": "mean",  # the release is frozen: no privacy term can move anything
            "privacy_pool": "batch",
        }
    )
    base.update({k: recorded[k] for k in RELEASE_OPTIONS if k in recorded})
    return TrainConfig(**base)


def _grids(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    grids = int_list(text, option)
    if not grids:
        raise VeilError(f"{option} is empty: list grid sizes such as 1,2,4, or leave it out")
    return grids


def tune_tail(
    transform: Path = typer.Option(..., "--transform", "-t", help="Transform whose release is kept."),
    out: Path = typer.Option(..., "--out", "-o", help="Transform directory to write (same release)."),
    weights: Path | None = WeightsOpt,
    images: list[Path] = typer.Option([], "--images", "-i", help="Photos (default: the source's)."),
    labels: list[Path] = typer.Option([], "--labels", help="Datasets (default: the source's)."),
    labels_part: str | None = typer.Option(None, help="all, train or test half of --labels."),
    task: str | None = typer.Option(None, help="distill, multibox or mixed (default: the source's)."),
    label_weight: float | None = FloatOpt(
        None, help="--task mixed: weight of MultiBox (default 1).", low=0, low_open=True
    ),
    distill_weights: str | None = typer.Option(None, help="score or uniform (default: the source's)."),
    scene_fraction: float | None = FloatOpt(
        None, help="Share of samples cropped from scenes.", low=0, high=1
    ),
    mosaic_grids: str | None = typer.Option(
        None, help="Mosaic sizes k (k x k photos), e.g. 8,12,16 for small faces (default: the source's)."
    ),
    scene_grids: str | None = typer.Option(
        None, help="Scene crops tiled k x k, e.g. 1,2,3,4 for crowds of small faces (default: the source's)."
    ),
    steps: int = typer.Option(1600, min=1, help="Optimisation steps of the tail."),
    samples: int | None = typer.Option(
        None, min=1, help="Training samples cached once (about 1 MiB each at 1024²; default: the source's)."
    ),
    batch_size: int | None = typer.Option(None, min=1, help="Samples per step."),
    lr_tail: float | None = FloatOpt(
        None, help="Tail learning rate (default: the source's).", low=0, low_open=True, high=1
    ),
    adapter: int | None = typer.Option(
        None,
        min=0,
        help="Residual conv blocks the server runs before the tail (0: none; default: the source's).",
    ),
    seed: int = typer.Option(
        1, min=0, help="Augmentation seed (not the source's, so the tail sees new crops)."
    ),
    threads: int | None = ThreadsOpt,
    device: str = typer.Option("cpu", help="Where to train: cpu or cuda (the cache must fit there)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train only the tail of a transform against its frozen release (privacy unchanged, accuracy up)."""
    from veil.device import check_device
    from veil.training import train as run

    if Path(out).resolve() == Path(transform).resolve():
        raise VeilError("--out must differ from --transform (the source is read while the result is written)")
    check_writable(out, "--out")
    cfg = tune_config(
        transform,
        resolve_weights(weights),
        images=[str(p) for p in images],
        labels=[str(p) for p in labels],
        labels_part=labels_part,
        task=task,
        label_weight=label_weight,
        distill_weights=distill_weights,
        scene_fraction=scene_fraction,
        mosaic_grids=_grids(mosaic_grids, "--mosaic-grids"),
        scene_grids=_grids(scene_grids, "--scene-grids"),
        steps=steps,
        samples=samples,
        batch_size=batch_size,
        lr_tail=lr_tail,
        tail_adapter=adapter,
        seed=seed,
        device=check_device(device),
    )
    set_threads(threads)
    metrics = run(cfg, out, progress=not quiet)
    if metrics.get("rank", 0) == 0:
        typer.echo(
            f"wrote {out}: release unchanged (SNR {metrics['snr_db']:.1f} dB), "
            f"clean-positive recall on the training cache {100 * metrics['clean_positive_recall']:.1f}%"
        )
