"""``veil audit``: how much of the input an attacker recovers from released tensors, per transform."""

from __future__ import annotations

from pathlib import Path

import typer

from veil.cli.checks import check_size, check_writable
from veil.cli.common import ThreadsOpt, WeightsOpt, resolve_weights, set_threads


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
    steps: int | None = typer.Option(None, min=1, help="Attacker training steps (default 1500)."),
    size: int | None = typer.Option(
        None,
        callback=check_size,
        help="Audit input size for clean baselines and per-channel transforms (default: each transform's "
        "own, 512 without transforms); per-element transforms only at their own size.",
    ),
    output_size: int | None = typer.Option(
        None, min=16, max=1024, help="Reconstruction size in pixels (default 128; SSIM needs 11+)."
    ),
    width: int | None = typer.Option(None, min=1, help="Decoder width (default 128)."),
    adapt_steps: int | None = typer.Option(None, min=0, help="Fine-tuning steps per K > 1 (default 300)."),
    linkage_steps: int | None = typer.Option(None, min=1, help="Linkage verifier steps (default 600)."),
    max_images: int | None = typer.Option(None, min=1, help="Use at most this many auxiliary images."),
    max_eval: int | None = typer.Option(None, min=1, help="Use at most this many images per --eval folder."),
    model: str = typer.Option("faceboxes", help="Model name from `veil models`."),
    seed: int = typer.Option(0, min=0, help="Seed of the attacker's own randomness."),
    threads: int | None = ThreadsOpt,
    device: str = typer.Option(
        "cpu", help="Where heads run and attackers train: cpu or cuda (the whole family in minutes)."
    ),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train reconstruction and linkage attackers against clean and noisy activations; write the report."""
    from veil.audit import AttackConfig, LinkageConfig, run_audit
    from veil.device import check_device

    check_writable(out, "--out")
    set_threads(threads)
    cfg = AttackConfig(seed=seed, max_images=max_images, device=check_device(device))
    for key, value in {
        "steps": steps,
        "output_size": output_size,
        "width": width,
        "adapt_steps": adapt_steps,
    }.items():
        if value is not None:  # ranges checked by the options
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
