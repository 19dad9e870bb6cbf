"""``veil tune-tail``: keep a transform's release exactly, train its server-side tail further.

Privacy depends only on what the client sends (head and noise), so this buys accuracy back without
invalidating the transform's privacy audit: the output's ``release_sha256`` equals the source's.

A FaceBoxes transform retrains through ``veil.training`` (its recorded configuration, ``--weights``); a
``veil.protect`` transform (any model) goes to :func:`veil.protection.tune_tail` with ``--model``
(+ ``--weights``) and ``--data`` (a folder of images, prepared as its input spec records): the tail learns
to reproduce the clean model's outputs from releases, behind a 1x1-conv (image wire) or linear
(vector/token wire) adapter of ``--adapter`` hidden units.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from veil.cli.checks import FloatOpt, check_writable
from veil.cli.common import ModelOpt, ThreadsOpt, WeightsOpt, int_list, resolve_weights, set_threads
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
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    data: Path | None = typer.Option(
        None, "--data", help="A veil.protect transform: folder of images to tune on (resized per its spec)."
    ),
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
        help="Adapter the server runs before the tail. FaceBoxes: residual conv blocks (0: none; default: "
        "the source's); a veil.protect transform: hidden units of its 1x1-conv/linear adapter (0: none).",
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
    from veil.serve.spec import is_generic

    faceboxes_only = {
        "--images": images,
        "--labels": labels,
        "--labels-part": labels_part,
        "--task": task,
        "--label-weight": label_weight,
        "--distill-weights": distill_weights,
        "--scene-fraction": scene_fraction,
        "--mosaic-grids": mosaic_grids,
        "--scene-grids": scene_grids,
        "--samples": samples,
    }
    if is_generic(transform):
        given = [name for name, value in faceboxes_only.items() if value not in (None, [])]
        if given:
            raise VeilError(
                f"{', '.join(given)}: FaceBoxes options; a veil.protect transform tunes on --data images"
            )
        set_threads(threads)
        _tune_generic(
            transform, out, model, weights, data, steps, batch_size, lr_tail, adapter, seed, device, quiet
        )
        return
    if data is not None:
        raise VeilError(f"--data is for veil.protect transforms; {transform} is FaceBoxes': use --images")
    if model.strip().lower() != "faceboxes":
        raise VeilError(
            f"{transform} is a FaceBoxes transform: drop --model {model} (its tail is FaceBoxes')"
        )
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


def _tune_generic(
    transform: Path,
    out: Path,
    model: str,
    weights: Path | None,
    data: Path | None,
    steps: int,
    batch_size: int | None,
    lr_tail: float | None,
    adapter: int | None,
    seed: int,
    device: str,
    quiet: bool,
) -> None:
    """``veil tune-tail`` of a veil.protect transform: :func:`veil.protection.tune_tail` on ``--data``."""
    import torch
    from torch.utils.data import DataLoader

    from veil.artifact import load_transform
    from veil.cli.common import resolve_model_option
    from veil.cli.train_generic import ImageFolder
    from veil.device import check_device
    from veil.protection import tune_tail

    if model.strip().lower() == "faceboxes":
        kind = load_transform(transform).meta.get("model")
        raise VeilError(
            f"{transform} was made by veil.protect for a {kind}: pass that model with "
            "--model NAME|package.module:factory (and --weights)"
        )
    if data is None:
        raise VeilError("a veil.protect transform tunes on images: pass --data FOLDER")
    spec = load_transform(transform).meta["input_spec"]
    shape, norm = [int(s) for s in spec["shape"]], spec.get("normalisation") or {}
    if len(shape) != 3 or shape[0] != 3 or not getattr(torch, str(spec["dtype"])).is_floating_point:
        raise VeilError(
            f"--data gives RGB images; {transform}'s input is {spec['dtype']} {tuple(shape)}: "
            "tune it from Python with veil.protection.tune_tail(dir, model, batches, out)"
        )
    choice = resolve_model_option(model, weights)  # veil.load checks it is the transform's model
    mean, std = (
        None if norm.get(k) is None else torch.tensor(norm[k], dtype=torch.float32).view(-1, 1, 1)
        for k in ("mean", "std")
    )
    images = ImageFolder(data, (shape[1], shape[2]), mean, std)
    loader: DataLoader[torch.Tensor] = DataLoader(
        images,  # type: ignore[arg-type]  # a map-style dataset: __len__ and __getitem__
        batch_size=min(batch_size or 8, len(images)),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    path = tune_tail(
        transform,
        choice.build(),
        loader,
        out,
        steps,
        adapter=adapter or None,
        lr_tail=lr_tail,
        progress=not quiet,
        device=check_device(device),
    )
    record = load_transform(path).meta
    run = record["tail_tuning"]
    typer.echo(
        f"wrote {path}: release unchanged ({record['release_sha256'][:16]}…), task loss "
        f"{run['task_first']:.4f} -> {run['task_last']:.4f} over {run['steps']} steps"
    )
