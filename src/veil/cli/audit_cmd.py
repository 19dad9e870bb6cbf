"""``veil audit``: how much of the input an attacker recovers from released tensors, per transform."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from veil.audit.choices import ATTACKS, PEERS
from veil.cli.checks import check_choices, check_counts, check_size, check_writable
from veil.cli.common import ThreadsOpt, resolve_weights, set_threads
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.audit import AttackConfig, AuditResult, LinkageConfig
    from veil.audit.loop import Extras


def audit(
    transform: list[Path] = typer.Option(
        [], "--transform", "-t", help="Transform directory to attack (repeatable; none: clean baseline only)."
    ),
    aux: Path | None = typer.Option(
        None,
        "--aux",
        help="The attacker's auxiliary images, e.g. ../shared/data/lfw/attack; vector transforms: rows "
        "(.csv/.npy), optional for a --model that supplies its own (breast-cancer-mlp).",
    ),
    eval_dirs: list[Path] = typer.Option(
        [],
        "--eval",
        help="Held-out images (repeatable); the first is the headline set, e.g. lfw/test; vector "
        "transforms: rows (.csv/.npy), optional as --aux.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: report.md, metrics.json, PNGs."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        "-w",
        help="FaceBoxes checkpoint (default: $VEIL_WEIGHTS, else the one veil ships); for a veil.protect "
        "transform the --model's weights: weights= for a factory that takes it, else a state dict.",
        show_default=False,
    ),
    sweep: Path | None = typer.Option(None, help="sweep.json from `veil sweep`: adds AP retained."),
    clean_split: list[str] = typer.Option(
        [],
        "--clean-split",
        help="Clean baseline split(s) (default: FaceBoxes rdcl); each transform's split is added too.",
    ),
    steps: int | None = typer.Option(None, min=1, help="Attacker training steps (default 1500)."),
    size: int | None = typer.Option(
        None,
        callback=check_size,
        help="Audit input size for clean baselines and per-channel transforms (default: each transform's "
        "own, 512 without transforms); per-element transforms only at their own size. For a veil.protect "
        "transform: size x size instead of its input spec's H x W.",
    ),
    output_size: int | None = typer.Option(
        None, min=16, max=1024, help="Reconstruction size in pixels (default 128; SSIM needs 11+)."
    ),
    width: int | None = typer.Option(None, min=1, help="Decoder width (default 128)."),
    adapt_steps: int | None = typer.Option(None, min=0, help="Fine-tuning steps per K > 1 (default 300)."),
    linkage_steps: int | None = typer.Option(None, min=1, help="Linkage verifier steps (default 600)."),
    max_images: int | None = typer.Option(None, min=1, help="Use at most this many auxiliary images."),
    max_eval: int | None = typer.Option(None, min=1, help="Use at most this many images per --eval folder."),
    model: str | None = typer.Option(
        None,
        help="A name from `veil models` or package.module:factory (default: faceboxes); a veil.protect "
        "transform needs the model it was made for.",
    ),
    ks: str = typer.Option(
        "1,4,16",
        "--ks",
        callback=check_counts,
        help="Repeated queries: K releases of one image the attacker averages (comma-separated, with 1; "
        "64 is a second of video). Each K > 1 costs --adapt-steps more training per transform.",
    ),
    attacks: str = typer.Option(
        "decoder",
        "--attacks",
        callback=check_choices(ATTACKS),
        help="Attacks to run, comma-separated or all: decoder (always: the learned decoder, linkage), rmle "
        "(white-box inversion), hybrid (inversion from the decoder's output), fisher (the dFIL bound), "
        "sticky (fresh vs sticky noise under repeated queries).",
    ),
    inversion_steps: int | None = typer.Option(
        None,
        min=1,
        help="rMLE optimisation steps per image batch (default 200, the hybrid 200 too; given, the hybrid "
        "takes half).",
    ),
    inversion_images: int | None = typer.Option(
        None, min=1, help="Headline-set images the white-box attacks invert and bound (default 16)."
    ),
    fisher_projections: int | None = typer.Option(
        None, min=2, help="Random projections per image for the Fisher-information estimate (default 8)."
    ),
    peers: str | None = typer.Option(
        None,
        "--peers",
        callback=check_choices(PEERS),
        help="Peer defences to re-implement at the transform's split and attack alike, comma-separated or "
        "all: gaussian, shredder, nopeek, disco, blur, downscale (needs a --model whose task scores them: "
        "mask-compliance, faceboxes). Adds the frontier to the report.",
    ),
    peer_levels: str | None = typer.Option(
        None,
        "--peer-levels",
        help="Each peer family's knob values, e.g. gaussian=0.5:1:2,blur=1:4 (default: three per family).",
    ),
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
    cfg.ks = tuple(int(k) for k in ks.split(","))
    extras = _extras(attacks, inversion_steps, inversion_images, fisher_projections, cfg)
    if peer_levels is not None and peers is None:
        raise VeilError("--peer-levels sets the knobs of --peers: add --peers FAMILIES (or all)")
    link = LinkageConfig(seed=seed, device=cfg.device)
    if linkage_steps is not None:
        link.steps = linkage_steps
    generic = _generic_transforms(transform)
    if generic and _vector_transforms(transform):
        from veil.audit.vector import VectorAttackConfig, audit_vectors

        if extras.attacks != ("decoder",) or cfg.ks != (1, 4, 16):
            raise VeilError(
                "--attacks and --ks apply to image transforms; a vector transform's audit is the "
                "regression attacker (drop them)"
            )
        vcfg = VectorAttackConfig(seed=seed, device=cfg.device, max_rows=max_images)
        vcfg.steps = steps or vcfg.steps
        audit_vectors(transform, model, weights, aux, eval_dirs, out, vcfg, clean_split, not quiet)
        typer.echo(f"report: {out / 'report.md'} (vector audit: R^2 per feature, r2_per_feature.png)")
        return
    if aux is None or not eval_dirs:
        raise VeilError("--aux and --eval are required: the attacker's images and held-out images to score")
    if peers is not None:
        extras.peers = _peers_hook(
            transform, model, weights, generic, peers, peer_levels, size, cfg, extras, quiet
        )
    if generic:
        result = _run_generic(
            transform,
            model,
            weights,
            aux,
            eval_dirs,
            out,
            cfg,
            link,
            clean_split,
            size,
            output_size,
            sweep,
            max_eval,
            quiet,
            extras,
        )
        typer.echo(
            f"report: {out / 'report.md'} ({len(result.targets)} targets, {len(result.eval_sets)} eval sets)"
        )
        return
    result = run_audit(
        resolve_weights(weights),
        transform,
        aux,
        eval_dirs,
        out,
        cfg=cfg,
        link_cfg=link,
        sweep=sweep,
        clean_splits=clean_split or ["rdcl"],
        size=size,
        model_name=model or "faceboxes",
        max_eval=max_eval,
        progress=not quiet,
        extras=extras,
    )
    typer.echo(
        f"report: {out / 'report.md'} ({len(result.targets)} targets, {len(result.eval_sets)} eval sets)"
    )


def _extras(
    attacks: str,
    steps: int | None,
    images: int | None,
    projections: int | None,
    cfg: AttackConfig,
) -> Extras:
    """``--attacks`` and the white-box budget as the audit's :class:`veil.audit.loop.Extras`."""
    from veil.audit.loop import Extras

    extras = Extras(attacks=Extras.parse(attacks), sticky_ks=cfg.ks)
    if extras.whitebox_attacks:
        from veil.audit.whitebox import WhiteboxConfig

        wb = WhiteboxConfig(seed=cfg.seed, device=cfg.device)
        for key, value in {"steps": steps, "images": images, "projections": projections}.items():
            if value is not None:
                setattr(wb, key, value)
        if steps is not None:
            wb.hybrid_steps = max(1, steps // 2)
        wb.check()
        extras.whitebox = wb
    elif any(v is not None for v in (steps, images, projections)):
        raise VeilError(
            "--inversion-steps, --inversion-images and --fisher-projections set the white-box attacks' "
            "budget: add --attacks rmle,hybrid,fisher (or all)"
        )
    return extras


def _peers_hook(
    transforms: list[Path],
    model: str | None,
    weights: Path | None,
    generic: bool,
    families: str,
    levels: str | None,
    size: int | None,
    cfg: AttackConfig,
    extras: Extras,
    quiet: bool,
) -> Any:
    """``--peers``: the frontier at the audited transforms' split (one split per run), on the headline set."""
    from veil.audit.inputs import read_transform
    from veil.audit.peer_attacks import parse_levels, peers_hook

    if not transforms:
        raise VeilError(
            "--peers compares peer defences at a transform's split: give --transform (veil's side)"
        )
    records = [read_transform(path) for path in transforms]
    splits = {str(tr.split) for tr in records}
    if len(splits) > 1:
        raise VeilError(
            f"--peers works at one split per run; these transforms are at {', '.join(sorted(splits))}"
        )
    names = families.split(",")
    if generic:
        spec = dict(records[0].meta["input_spec"])
        side = size or int(spec["shape"][1])
        spec["shape"] = [int(spec["shape"][0]), side, side]
        model_spec, w = model or "", weights
    else:
        from veil.audit.faceboxes import input_spec

        side = size or int((records[0].meta.get("input_size") or [cfg.input_size])[0])
        spec, model_spec, w = input_spec(side), model or "faceboxes", resolve_weights(weights)
    whitebox = extras.whitebox if "hybrid" in extras.attacks else None
    return peers_hook(
        model_spec,
        w,
        splits.pop(),
        spec,
        transforms,
        names,
        parse_levels(levels, names),
        cfg,
        side,
        whitebox,
        not quiet,
    )


def _vector_transforms(transforms: list[Path]) -> bool:
    """True when every --transform releases vectors (B, C) from (B, D) inputs; mixing is refused."""
    from veil.audit.inputs import read_transform
    from veil.audit.vector import is_vector

    kinds = {path: is_vector(read_transform(path)) for path in transforms}
    if len(set(kinds.values())) > 1:
        raise VeilError("--transform mixes vector and image transforms: audit them in separate runs")
    return any(kinds.values())


def _generic_transforms(transforms: list[Path]) -> bool:
    """True when every --transform is a veil.protect one, False when none is; mixing is refused."""
    from veil.audit.inputs import is_generic, read_transform

    kinds = {path: is_generic(read_transform(path)) for path in transforms}
    if len(set(kinds.values())) > 1:
        generic = next(p for p, g in kinds.items() if g)
        other = next(p for p, g in kinds.items() if not g)
        raise VeilError(
            f"--transform {generic} was made by veil.protect, {other} is a FaceBoxes transform: "
            "audit them in separate runs"
        )
    return any(kinds.values())


def _run_generic(
    transform: list[Path],
    model: str | None,
    weights: Path | None,
    aux: Path,
    eval_dirs: list[Path],
    out: Path,
    cfg: AttackConfig,
    link: LinkageConfig,
    clean_split: list[str],
    size: int | None,
    output_size: int | None,
    sweep: Path | None,
    max_eval: int | None,
    quiet: bool,
    extras: Extras,
) -> AuditResult:
    """`veil audit` of veil.protect transforms: the model from --model (+ --weights), images per spec."""
    from veil.audit.generic import load_generic, run_generic_audit
    from veil.audit.inputs import default_output_size, image_spec, load_model, read_transform

    specs = [image_spec(read_transform(path)) for path in transform]  # "not an image model" before the model
    if model is None:
        kind = read_transform(transform[0]).meta.get("model")
        raise VeilError(
            f"--transform {transform[0]} was made by veil.protect for a {kind}: pass that model with "
            "--model NAME|package.module:factory (and --weights)"
        )
    if sweep is not None:
        raise VeilError(
            "--sweep joins `veil sweep` rows of FaceBoxes transforms: drop it for a veil.protect one"
        )
    if output_size is None:
        sizes = [(h, w) if size is None else (size, size) for _, h, w in specs]
        cfg.output_size = min(default_output_size(hw, cfg.output_size) for hw in sizes)
    net = load_model(model, weights)
    loaded = load_generic(transform, net)
    return run_generic_audit(
        loaded,
        net,
        aux,
        eval_dirs,
        out,
        cfg=cfg,
        link_cfg=link,
        clean_splits=clean_split,
        size=size,
        model_spec=model,
        weights=weights,
        max_eval=max_eval,
        progress=not quiet,
        extras=extras,
    )
