"""``veil audit``: how much of the input an attacker recovers from released tensors, per transform."""

from __future__ import annotations

from pathlib import Path

import typer

from veil.cli.common import WeightsOpt, resolve_weights, set_threads
from veil.device import check_device
from veil.errors import VeilError


def audit(
    transform: list[Path] = typer.Option(
        [], "--transform", "-t", help="Transform directory to attack (repeatable; none: clean baseline only)."
    ),
    aux: Path = typer.Option(
        ..., "--aux", help="The attacker's auxiliary images, e.g. ../shared/data/lfw/attack."
    ),
    eval_dirs: list[Path] = typer.Option(
        ..., "--eval", help="Held-out images (repeatable); the first is the headline set, e.g. lfw/test."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: report.md, metrics.json, PNGs."),
    weights: Path | None = WeightsOpt,
    sweep: Path | None = typer.Option(None, help="sweep.json from `veil sweep`: adds AP retained."),
    clean_split: list[str] = typer.Option(
        ["rdcl"], "--clean-split", help="Clean baseline split(s); each transform's split is added too."
    ),
    steps: int | None = typer.Option(None, help="Attacker training steps (default 1500)."),
    size: int | None = typer.Option(
        None,
        help="Audit input size for clean baselines and per-channel transforms (default: each transform's "
        "own, 512 without transforms); per-element transforms only at their own size.",
    ),
    output_size: int | None = typer.Option(None, help="Reconstruction size in pixels (default 128)."),
    width: int | None = typer.Option(None, help="Decoder width (default 128)."),
    adapt_steps: int | None = typer.Option(None, help="Fine-tuning steps per K > 1 (default 300)."),
    linkage_steps: int | None = typer.Option(None, help="Linkage verifier steps (default 600)."),
    max_images: int | None = typer.Option(None, help="Use at most this many auxiliary images."),
    max_eval: int | None = typer.Option(None, help="Use at most this many images per --eval folder."),
    model: str = typer.Option("faceboxes", help="Model name from `veil models`."),
    seed: int = typer.Option(0, help="Seed of the attacker's own randomness."),
    threads: int | None = typer.Option(None, help="CPU threads for PyTorch."),
    device: str = typer.Option(
        "cpu", help="Where heads run and attackers train: cpu or cuda (the whole family in minutes)."
    ),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train reconstruction and linkage attackers against clean and noisy activations; write the report."""
    from veil.audit import AttackConfig, LinkageConfig, run_audit

    set_threads(threads)
    if size is not None and (size < 32 or size % 32):
        raise VeilError(f"--size must be a positive multiple of 32, got {size}")
    cfg = AttackConfig(seed=seed, max_images=max_images, device=check_device(device))
    for key, value in {
        "steps": steps,
        "output_size": output_size,
        "width": width,
        "adapt_steps": adapt_steps,
    }.items():
        if value is not None:
            if value < (0 if key == "adapt_steps" else 1):
                raise VeilError(f"--{key.replace('_', '-')} must be positive, got {value}")
            setattr(cfg, key, value)
    if size is not None:
        cfg.input_size = size
    link = LinkageConfig(seed=seed, device=cfg.device)
    if linkage_steps is not None:
        link.steps = linkage_steps
    result = run_audit(
        resolve_weights(weights),
        transform,
        aux,
        eval_dirs,
        out,
        cfg=cfg,
        link_cfg=link,
        sweep=sweep,
        clean_splits=clean_split,
        size=size,
        model_name=model,
        max_eval=max_eval,
        progress=not quiet,
    )
    typer.echo(
        f"report: {out / 'report.md'} ({len(result.targets)} targets, {len(result.eval_sets)} eval sets)"
    )
