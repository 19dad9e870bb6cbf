"""``veil export triton``: the Triton model repository a user deploys on their own server."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from veil.cli.checks import check_writable
from veil.cli.common import ModelOpt, WeightsOpt, tail_source

if TYPE_CHECKING:
    import torch

app = typer.Typer(help="Export veil's tails for deployment.", no_args_is_help=True)


def export_triton(
    weights: Path,
    out: Path,
    *,
    gpu: bool = False,
    max_batch_size: int = 8,
    instances: int = 1,
    overwrite: bool = False,
    tail_state_dict: Mapping[str, torch.Tensor] | None = None,
    transform: Path | None = None,
    backend: str = "libtorch",
) -> None:
    """The command's body, callable with a noise-trained tail (``tail_state_dict``) for the noisy model."""
    from veil.serve.export import build_tails, export_triton_repository
    from veil.serve.spec import is_generic

    if transform is not None and is_generic(transform):
        from veil.serve.generic import export_triton as export_generic

        done = export_generic(
            transform, out, backend=backend, gpu=gpu, max_batch_size=max_batch_size, instances=instances,
            overwrite=overwrite,
        )  # fmt: skip
        for name, diff in done.max_abs_diff.items():
            typer.echo(f"{name}: {backend} tail from {transform} (max abs diff {diff:.2g})")
        typer.echo(f"model repository -> {done.path}")
        return

    base, noisy = build_tails(weights, tail_state_dict=tail_state_dict)
    if transform is not None:
        from veil.faceboxes.pipeline import transform_tail

        noisy = transform_tail(weights, transform)
    result = export_triton_repository(
        out,
        base,
        noisy,
        gpu=gpu,
        max_batch_size=max_batch_size,
        instances=instances,
        overwrite=overwrite,
        backend=backend,
    )
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    what = {"onnx": "ONNX (onnxruntime_onnx)", "python": "TorchScript (Python backend)"}.get(
        backend, "TorchScript"
    )
    for name, diff in result.max_abs_diff.items():
        typer.echo(f"{name}: {what} matches the PyTorch tail (max abs diff {diff:.2g}), {kind}")
    if tail_state_dict is None and transform is None:
        typer.echo("note: no noise-trained tail given: face_detection_noisy carries the base weights")
    typer.echo(f"model repository -> {result.path}")


@app.command("triton")
def triton(
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    out: Path = typer.Option(Path("model_repository"), "--out", "-o", help="Repository folder to create."),
    gpu: bool = typer.Option(False, "--gpu/--cpu", help="instance_group KIND_GPU instead of KIND_CPU."),
    max_batch_size: int = typer.Option(8, min=1, help="max_batch_size of both models (dynamic batching)."),
    instances: int = typer.Option(1, min=1, help="Model instances per model (instance_group count)."),
    overwrite: bool = typer.Option(False, help="Replace an existing repository (atomically)."),
    transform: Path | None = typer.Option(
        None,
        "--transform",
        "-t",
        help="Transform directory: face_detection_noisy gets its tail; one made by veil.protect "
        "exports its own tail (no --weights).",
    ),
    backend: str = typer.Option(
        "libtorch",
        help="libtorch (TorchScript, pytorch_libtorch), onnx (onnxruntime_onnx) or python "
        "(TorchScript run by Triton's Python backend, as `veil serve` does).",
    ),
    onnx: bool = typer.Option(False, "--onnx", help="Same as --backend onnx."),
) -> None:
    """Write face_detection_base and face_detection_noisy for Triton (TorchScript, ONNX or Python)."""
    check_writable(out, "--out")
    w = tail_source(model, weights, transform, "export triton")  # None: the transform carries its tail
    export_triton(
        Path() if w is None else w,
        out,
        gpu=gpu,
        max_batch_size=max_batch_size,
        instances=instances,
        overwrite=overwrite,
        transform=transform,
        backend="onnx" if onnx else backend,
    )
