"""``veil k8s``: Kubernetes manifests for the reference design's batch Jobs and Triton server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from veil.cli.checks import check_writable
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.k8s import Manifest

app = typer.Typer(help="Kubernetes manifests: batch Jobs (raw, obfuscated, sharded) and a Triton server.")


@app.command("render")
def render_cmd(
    namespace: str = typer.Option("inference", help="Namespace of every object."),
    image: str = typer.Option("veil:gpu", help="veil image for the Jobs (see deploy/docker)."),
    pvc: str = typer.Option("inference-data", "--pvc", help="Data PVC, mounted at /data."),
    model_repo_pvc: str = typer.Option("triton-model-repo", help="Triton model repository PVC (/models)."),
    storage_class: str = typer.Option(
        "ontap-nas", help="StorageClass of both PVCs (Trident or any CSI); '' uses the cluster default."
    ),
    data_size: str = typer.Option("50Gi", help="Size of the data PVC."),
    model_repo_size: str = typer.Option("100Gi", help="Size of the model repository PVC."),
    access_mode: str = typer.Option(
        "ReadWriteMany", help="PVC access mode (sharded pods share the data PVC)."
    ),
    alpha: str = typer.Option(
        "0.8",
        help="Noise level(s) of the obfuscated Job, e.g. 0.2,0.5: one Job each, in (0, 1). "
        "Each Job reads the transform at --transform-dir with $(ALPHA) expanded, so put one there per alpha "
        "(unlike `veil eval --alpha`, any alpha you trained, not only the shipped ones).",
    ),
    gpus: int = typer.Option(
        1, min=0, help="nvidia.com/gpu limit per inference pod and for Triton; 0 = CPU only."
    ),
    cpu: str = typer.Option("2", help="CPU request per pod when --gpus 0."),
    memory: str = typer.Option("4Gi", help="Memory request per pod when --gpus 0."),
    num_shards: int = typer.Option(2, min=1, help="Pods of the Indexed Job (completions = parallelism)."),
    dataset: str = typer.Option("/data/FDDB", help="FDDB root inside the pod."),
    weights: str = typer.Option("/data/weights/FaceBoxes.pth", help="Checkpoint inside the pod."),
    model: str = typer.Option(
        "faceboxes",
        "--model",
        metavar="NAME|PKG.MOD:FACTORY",
        help="Model the eval Jobs run (passed on as --model; a face detector: installed in --image).",
    ),
    transform_dir: str = typer.Option(
        "/data/transforms/alpha-$(ALPHA)", help="Transform folder inside the pod; $(ALPHA) is expanded."
    ),
    results_dir: str = typer.Option("/data/results", help="Where the sharded Job writes part-I.json."),
    triton_image: str = typer.Option("nvcr.io/nvidia/tritonserver:24.08-py3", help="Triton server image."),
    service_type: str = typer.Option(
        "NodePort", help="Triton Service type: NodePort, ClusterIP, LoadBalancer."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write one file per manifest here (default: one YAML stream on stdout)."
    ),
) -> None:
    """Fill the manifests of deploy/k8s; with no options the output equals those files."""
    from veil.k8s import K8sConfig, parse_alphas, render, to_yaml, write_manifests

    check_writable(out, "--out")
    alphas = parse_alphas(alpha)
    too_big = [a for a in alphas if float(a) >= 1]
    if too_big:
        raise VeilError(f"--alpha must be in (0, 1), got {', '.join(too_big)}")

    cfg = K8sConfig(
        namespace=namespace,
        image=image,
        data_pvc=pvc,
        model_repo_pvc=model_repo_pvc,
        storage_class=storage_class or None,
        access_mode=access_mode,
        data_size=data_size,
        model_repo_size=model_repo_size,
        alphas=alphas,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        num_shards=num_shards,
        dataset=dataset,
        weights=weights,
        transform_dir=transform_dir,
        results_dir=results_dir,
        triton_image=triton_image,
        service_type=service_type,
    )
    manifests = with_model(render(cfg), model)
    if out is None:
        typer.echo(to_yaml(m.doc for m in manifests), nl=False)
        return
    for path in write_manifests(manifests, out):
        typer.echo(str(path))


def with_model(manifests: list[Manifest], model: str) -> list[Manifest]:
    """Every ``veil eval`` container gets ``--model MODEL`` (none for the default, FaceBoxes)."""
    import re

    from veil.k8s import pod_specs

    model = model.strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_.]*)?", model):
        raise VeilError(f"--model must be a model name or package.module:factory, got {model!r}")
    if model.lower() == "faceboxes":
        return manifests
    from veil.models.public import FACEBOXES_TASK, resolve_entry

    try:  # known here: it must be a face detector (the Jobs run veil eval); unknown: installed in the image
        entry = resolve_entry(model)
    except VeilError:
        entry = None
    if entry is not None and entry.task != FACEBOXES_TASK:
        raise VeilError(
            f"the Jobs run veil eval, which runs face detectors (task faceboxes); {model} is a "
            f"{entry.task} model: protect it with `veil train --model {model} ...` and serve its transform"
        )
    for manifest in manifests:
        for spec in pod_specs(manifest.doc):
            for container in spec.get("containers", []):
                args = container.get("args") or []
                if container.get("command") == ["veil"] and args[:1] == ["eval"] and "merge" not in args:
                    container["args"] = [args[0], "--model", model, *args[1:]]
    return manifests


def dry_run(argv: Sequence[str]) -> list[str]:
    """Parse a ``veil`` command line with the real CLI, running nothing; returns the sub-command path.

    Raises the CLI's usage error (an unknown option, a missing argument, a bad value) like the real
    ``veil`` would; ``--help`` raises ``typer.Exit(0)``. A leading ``veil`` in ``argv`` is skipped.
    """
    import typer.main

    from veil.cli.main import app as veil_app

    args = list(argv)
    if args and Path(args[0]).name == "veil":
        args = args[1:]
    command = typer.main.get_command(veil_app)
    ctx = command.make_context("veil", args, resilient_parsing=False)
    path: list[str] = []
    while hasattr(ctx.command, "resolve_command"):  # a group: descend into its sub-command
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
        rest = [*protected, *ctx.args]
        if not rest:
            if not getattr(ctx.command, "invoke_without_command", False):
                ctx.fail("Missing command.")
            break
        name, sub, sub_args = ctx.command.resolve_command(ctx, rest)
        if sub is None or name is None:
            raise VeilError(f"no such command: {rest[0]!r}")
        path.append(name)
        ctx = sub.make_context(name, sub_args, parent=ctx, resilient_parsing=False)
    return path
