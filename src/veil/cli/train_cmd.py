"""``veil train``: learn a noise transform (FaceBoxes' trainer, or ``veil.protect`` for any other model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from veil.cli.checks import MAX_SIZE, FloatOpt, check_size, check_writable
from veil.cli.common import (
    ModelOpt,
    ThreadsOpt,
    WeightsOpt,
    int_list,
    resolve_model_option,
    set_threads,
)
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.training import TrainConfig


#: ``veil train --recipe NAME``: named option sets. ``shipped-default`` is the release step of the shipped
#: default transform (``scripts/train_shipped.sh``, step 1: faceboxes-inception3-alpha0.12); its tail was then
#: tuned further with ``veil tune-tail --adapter 2`` (step 2). The data options stay yours.
RECIPES: dict[str, dict[str, Any]] = {
    "shipped-default": {
        "split": "inception3",
        "alpha": 0.12,
        "granularity": "channel",
        "train_tail": True,
        "train_head": True,
        "lr_tail": 1e-4,
        "privacy": "adversarial",
        "adversary_weight": 3.0,
        "adversary_steps": 4,
        "adversary_size": 1024,
        "distill_weights": "uniform",
        "steps": 1600,
        "samples": 256,
        "input_size": 1024,
        "scene_fraction": 0.75,
    }
}
_OPTION_OF = {"input_size": "size"}  # TrainConfig field -> the command's parameter, where they differ


def _recipe(ctx: typer.Context, name: str | None) -> dict[str, Any]:
    """The recipe's values for every option not given on the command line (or by environment)."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise VeilError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    sources = {p: ctx.get_parameter_source(p) for p in ctx.params}
    given = {p for p, source in sources.items() if source is not None and source.name != "DEFAULT"}
    return {k: v for k, v in RECIPES[name].items() if _OPTION_OF.get(k, k) not in given}


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise VeilError(f"--alpha must be in [0, 1), got {alpha}")


def train_config(
    weights: Path,
    images: list[Path],
    scenes: list[Path],
    alpha: float,
    granularity: str,
    recipe: dict[str, Any] | None = None,
    **options: Any,
) -> TrainConfig:
    """One validated TrainConfig from command-line values (shared by train and sweep); ``recipe`` (from
    :func:`_recipe`) overrides the options it names."""
    from veil.noise import GRANULARITIES
    from veil.training import TrainConfig

    recipe = dict(recipe or {})
    alpha, granularity = recipe.pop("alpha", alpha), recipe.pop("granularity", granularity)
    options.update(recipe)

    check_alpha(alpha)
    if granularity not in GRANULARITIES:
        raise VeilError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if options.get("smax_factor", 1.0) <= 0 or options.get("suppress_factor", 1.0) <= 0:
        raise VeilError("--smax-factor and --suppress-factor must be positive")
    options["labels"] = [str(p) for p in options.get("labels", [])]
    return TrainConfig(
        weights=str(weights),
        images=[str(p) for p in images],
        scenes=[str(p) for p in scenes],
        alpha=alpha,
        granularity=granularity,  # type: ignore[arg-type]
        **options,
    )


def _faceboxes_size(size: str | None) -> int:
    """FaceBoxes' ``--size``: one side, a multiple of 32 (default 1024); a bad one is one line."""
    if size is None:
        return 1024
    try:
        value = int(size)
    except ValueError:
        raise VeilError(f"--size for FaceBoxes is one multiple of 32 (square input), got {size!r}") from None
    try:
        check_size(value)
    except typer.BadParameter as exc:
        raise VeilError(f"--size: {exc}") from None
    assert value is not None
    return value


def train(
    ctx: typer.Context,
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    data: Path | None = typer.Option(
        None, "--data", help="A model other than FaceBoxes: folder of images to fit on (label-free)."
    ),
    mean: str | None = typer.Option(
        None, help="With --data: per-channel mean subtracted after scaling to [0, 1], e.g. 0.485,0.456,0.406."
    ),
    std: str | None = typer.Option(
        None, help="With --data: per-channel std divided by after --mean, e.g. 0.229,0.224,0.225."
    ),
    images: list[Path] = typer.Option([], "--images", "-i", help="Unlabeled photos (mosaicked); repeatable."),
    alpha: float | None = FloatOpt(
        None,
        help="0 = accuracy only ... towards 1 = hide as much as possible (required unless --recipe sets it).",
        low=0,
        high=1,
        high_open=True,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Transform directory to write."),
    scenes: list[Path] = typer.Option(
        [], "--scenes", help="Real multi-face scenes to crop from; repeatable."
    ),
    labels: list[Path] = typer.Option(
        [], "--labels", help="Annotated dataset (FDDB/WIDER layout): boxes for --task multibox, else scenes."
    ),
    labels_part: str = typer.Option("all", help="Use this half of --labels: all, train or test."),
    task: str = typer.Option(
        "distill",
        help="distill (label-free, default), multibox (supervised) or mixed (both: half boxed); another "
        "--model: distill (regression on its outputs) or classification (KL on its logits).",
    ),
    label_weight: float = FloatOpt(
        1.0, help="--task mixed: weight of MultiBox against distillation.", low=0, low_open=True
    ),
    distill_weights: str = typer.Option(
        "score", help="Face anchors count by clean score, or uniform (small faces count as much)."
    ),
    scene_fraction: float = FloatOpt(0.25, help="Share of samples cropped from scenes.", low=0, high=1),
    mosaic_grids: str = typer.Option(
        "1,2,3,4,6,8,12,16", help="Mosaic sizes k (k x k photos) to draw from: larger k, smaller faces."
    ),
    scene_grids: str = typer.Option(
        "1", help="Scene crops tiled k x k (e.g. 1,2,3,4): small scene photos then show small faces too."
    ),
    split: str | None = typer.Option(
        None,
        help="Split point: FaceBoxes: rdcl (reference design) or inception1..3 (default inception3); "
        "another --model: a module name from veil.split_points (default: its registered split).",
    ),
    train_tail: bool = typer.Option(True, "--train-tail/--noise-only", help="Fine-tune the tail jointly."),
    train_head: bool = typer.Option(
        False, "--train-head", help="Also fine-tune the head's last block (the client then runs it)."
    ),
    head_blocks: int = typer.Option(
        1,
        min=1,
        help="With --train-head: how many blocks before the split to fine-tune (the first stays frozen).",
    ),
    granularity: str | None = typer.Option(
        None,
        help="element (per-element sigma; FaceBoxes' default), channel (shift-invariant; other models' "
        "default) or conditional (FaceBoxes: sigma predicted from the activation, per request).",
    ),
    steps: int = typer.Option(400, min=1, help="Optimisation steps."),
    samples: int = typer.Option(
        256, min=1, help="Training samples (mosaics/crops) cached once (about 1 MiB each at 1024²)."
    ),
    batch_size: int = typer.Option(8, min=1, help="Samples per step (per process under torchrun)."),
    lr_tail: float = FloatOpt(
        3e-5, help="Learning rate of the tail (with --train-tail).", low=0, low_open=True, high=1
    ),
    adapter: int = typer.Option(
        0, min=0, help="Residual conv blocks the server runs before the tail, trained with it (0: none)."
    ),
    lr_head: float = FloatOpt(
        1e-4, help="Learning rate of the head's last block (with --train-head).", low=0, low_open=True, high=1
    ),
    privacy: str = typer.Option(
        "mean",
        help="mean: -log mean sigma (Cloak); relative: per-channel SNR; adversarial: + online decoder.",
    ),
    privacy_pool: str = typer.Option(
        "batch",
        help="conditional: batch (-log of the batch's mean sigma) or request (mean of each request's "
        "-log mean sigma: no request stays nearly clean).",
    ),
    adversary_weight: float = FloatOpt(1.0, help="Weight of the online decoder's term (adversarial).", low=0),
    adversary_photos: int = typer.Option(
        256, min=1, help="Photos the online decoder learns from (adversarial)."
    ),
    adversary_steps: int = typer.Option(
        1, min=1, help="Online decoder updates per training step (adversarial)."
    ),
    adversary_size: int = typer.Option(
        0,
        min=0,
        max=MAX_SIZE,
        help="Input size the online decoder attacks (adversarial); 0 = half of --size, cheaper.",
    ),
    adversary_reset: int = typer.Option(
        0, min=0, help="Start a fresh online decoder every N steps (adversarial); 0 = never."
    ),
    smax_factor: float = FloatOpt(
        8.0, help="Noise cap: sigma never exceeds this many times the activations' std.", low=0, low_open=True
    ),
    suppress_factor: float = FloatOpt(
        0.95,
        help="Suppress (send the constant mu) where sigma ends above this share of the cap; > 1: never.",
        low=0,
        low_open=True,
    ),
    suppress_max: float = FloatOpt(
        1.0, help="Suppress at most this share of the elements (the noisiest); 1: no cap.", low=0, high=1
    ),
    size: str | None = typer.Option(
        None,
        help="Input size the transform is trained for: FaceBoxes: a multiple of 32 (default 1024); "
        "another --model: N or HxW, the --data images are resized to it (default: its registered example).",
    ),
    seed: int = typer.Option(
        0, min=0, help="Seed of the data augmentation (the noise itself stays OS-seeded)."
    ),
    threads: int | None = ThreadsOpt,
    device: str = typer.Option("cpu", help="Where to train: cpu or cuda (one process; the cache must fit)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="FaceBoxes: shipped-default = the options the shipped default's release was trained with "
        "(scripts/train_shipped.sh: split inception3, alpha 0.12, channel noise, head block and tail trained "
        "against a full-size online attacker, 1,600 steps); options you give win. Without it the defaults "
        "make the older, less private kind (per-element noise, head fixed).",
    ),
) -> None:
    """Learn a noise transform for a model split; resumable, works under torchrun."""
    from veil.device import check_device

    check_writable(out, "--out")
    choice = resolve_model_option(model, weights)
    if not choice.faceboxes:
        from veil.cli.train_generic import GenericOptions, parse_channels, parse_hw, train_generic

        given = {"--images": images, "--scenes": scenes, "--labels": labels, "--adapter": adapter}
        given["--recipe"] = recipe
        for option, value in given.items():
            if value:
                raise VeilError(f"{option} is for FaceBoxes training; {model} trains on --data IMAGE_DIR")
        if task not in ("distill", "classification"):
            raise VeilError(f"--task must be distill or classification for {model}, got {task!r}")
        if data is None:
            raise VeilError(f"--data IMAGE_DIR is needed: the images {model} is fitted on (label-free)")
        if alpha is None:
            raise VeilError("--alpha is needed: 0 = accuracy only ... towards 1 = hide as much as possible")
        if privacy != "mean" or granularity == "conditional":
            raise VeilError(f"{model}: --privacy mean and --granularity channel or element only in the CLI")
        check_alpha(alpha)
        opts = GenericOptions(
            data=data,
            size=parse_hw(size),
            split=split,
            alpha=alpha,
            steps=steps,
            out=out,
            batch_size=batch_size,
            granularity=granularity or "channel",
            mean=parse_channels(mean, "--mean"),
            std=parse_channels(std, "--std"),
            task="classification" if task == "classification" else "regression",
            lr_tail=lr_tail,
            lr_head=lr_head,
            train_tail=train_tail,
            train_head=train_head,
            smax_factor=smax_factor,
            suppress_factor=suppress_factor,
            suppress_max=suppress_max,
            seed=seed,
            device=check_device(device),
            progress=not quiet,
        )
        set_threads(threads)
        path, meta = train_generic(choice, opts)
        typer.echo(
            f"wrote {path}: {model} split {meta['split']}, alpha {alpha:g}, mean sigma "
            f"{meta['mean_sigma']:.3f}, suppressed {100 * meta['suppressed_fraction']:.1f}%"
        )
        typer.echo(f"release_sha256 {meta['release_sha256']}")
        return
    for option, value in {"--data": data, "--mean": mean, "--std": std}.items():
        if value is not None:
            raise VeilError(
                f"{option} is for a model other than FaceBoxes (--model); FaceBoxes trains on --images"
            )
    from veil.training import train as run

    chosen = _recipe(ctx, recipe)
    if alpha is None and "alpha" not in chosen:
        raise VeilError(
            "--alpha is needed (0 = accuracy only ... towards 1 = hide), or --recipe shipped-default"
        )
    if chosen:
        typer.echo(f"recipe {recipe}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    cfg = train_config(
        choice.require_faceboxes("train"),
        images,
        scenes,
        alpha if alpha is not None else float(chosen["alpha"]),
        granularity or "element",
        recipe=chosen,
        split=split or "inception3",
        train_tail=train_tail,
        train_head=train_head,
        head_blocks=head_blocks,
        steps=steps,
        samples=samples,
        batch_size=batch_size,
        input_size=_faceboxes_size(size),
        seed=seed,
        labels=labels,
        labels_part=labels_part,
        task=task,
        label_weight=label_weight,
        distill_weights=distill_weights,
        scene_fraction=scene_fraction,
        mosaic_grids=int_list(mosaic_grids, "--mosaic-grids"),
        scene_grids=int_list(scene_grids, "--scene-grids"),
        lr_tail=lr_tail,
        tail_adapter=adapter,
        lr_head=lr_head,
        privacy=privacy,
        privacy_pool=privacy_pool,
        adversary_weight=adversary_weight,
        adversary_photos=adversary_photos,
        adversary_steps=adversary_steps,
        adversary_size=adversary_size,
        adversary_reset=adversary_reset,
        smax_factor=smax_factor,
        suppress_factor=suppress_factor,
        suppress_max=suppress_max,
        device=check_device(device),
    )
    set_threads(threads)
    metrics = run(cfg, out, progress=not quiet)
    if metrics.get("rank", 0) == 0:
        typer.echo(
            f"wrote {out}: mean sigma {metrics['mean_sigma']:.3f}, SNR {metrics['snr_db']:.1f} dB, "
            f"suppressed {100 * metrics['suppressed_fraction']:.1f}%"
            + (
                f"; recipe {recipe} (then `veil tune-tail -t {out} --adapter 2` for its tail)"
                if recipe
                else ""
            )
        )
