"""``veil serve``: a real Triton server (the one in the nvidia-pytriton wheel) running the tail here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from veil.cli.checks import check_writable
from veil.cli.common import ModelOpt, resolve_weights, set_threads, tail_source
from veil.errors import VeilError

if TYPE_CHECKING:  # torch loads inside the command: `veil --help` stays fast
    import torch


def _generic(transform: Path) -> bool:
    from veil.serve.spec import is_generic

    return is_generic(transform)


def run_server(
    *,
    model_repository: Path | None = None,
    weights: Path | None = None,
    tail_state_dict: Mapping[str, torch.Tensor] | None = None,
    transform: Path | list[Path] | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch_size: int = 8,
    max_queue_delay_us: int | None = None,
    instances: int = 0,
    access_token: str | None = None,
    no_auth: bool = False,
    triton_log: Path | None = None,
    device: str = "cpu",
    eager: bool = False,
    engine: str = "python",
    threads: int | None = None,
    record: Path | None = None,
    record_max_mb: int = 1024,
    record_max_files: int = 10_000,
    http_guard: bool = True,
    grpc_guard: bool = True,
) -> None:
    """The command's body: serve until SIGINT/SIGTERM. ``tail_state_dict`` = the noise-trained tail;
    several ``transform`` directories (protected models' only) are served side by side."""
    from veil.serve.server import ServerConfig, VeilServer

    several: list[Path] = []
    if isinstance(transform, list):
        several, transform = (
            (transform, None) if len(transform) > 1 else ([], transform[0] if transform else None)
        )

    if model_repository is not None and (weights is not None or tail_state_dict is not None or transform):
        raise VeilError("give either --model-repository or --weights (with its transform), not both")
    config = ServerConfig(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch_size=max_batch_size,
        **({} if max_queue_delay_us is None else {"max_queue_delay_us": max_queue_delay_us}),
        instances=instances,
        access_token=access_token,
        restrict=not no_auth,
        log_file=triton_log,
        freeze=not eager,
        engine=engine,
        threads=threads or 0,
        record_dir=record,
        record_max_bytes=record_max_mb << 20,
        record_max_files=record_max_files,
        http_guard=http_guard,
        grpc_guard=grpc_guard,
    )
    if several:
        if model_repository is not None or weights is not None or tail_state_dict is not None:
            raise VeilError(
                "several --transform: each carries its tail (tail.pt): drop --weights/--model-repository"
            )
        for t in several:
            if not _generic(t):
                raise VeilError(
                    f"{t}: a FaceBoxes transform (no tail.pt) is served alone with --weights; to serve "
                    "it beside others, save it on the generic path (veil.faceboxes.generic.from_transform)"
                )
        server = VeilServer.from_transform(several, config, device=device)
        source = "the protected tails of " + ", ".join(map(str, several)) + " (their noisy models only)"
    elif model_repository is not None:
        server = VeilServer.from_repository(model_repository, config, device=device)
        source = f"TorchScript tails from {model_repository}"
    elif transform is not None and _generic(transform):
        if weights is not None or tail_state_dict is not None:
            raise VeilError("a protected model's transform carries its tail (tail.pt): drop --weights")
        server = VeilServer.from_transform(transform, config, device=device)
        source = f"the protected tail of {transform} (its noisy model only)"
    elif transform is not None:
        from veil.faceboxes.pipeline import transform_tail

        w = resolve_weights(weights)
        server = VeilServer.from_weights(
            w, noisy_tail=transform_tail(w, transform), config=config, device=device
        )
        source = f"tails from {w}; face_detection_noisy from transform {transform}"
    else:
        server = VeilServer.from_weights(
            resolve_weights(weights), tail_state_dict=tail_state_dict, config=config, device=device
        )
        source = "tails from " + str(resolve_weights(weights))
        if tail_state_dict is None:
            source += " (no noise-trained tail: face_detection_noisy serves the base weights)"

    def ready(srv: VeilServer) -> None:
        ep = srv.endpoints
        typer.echo("Server endpoints:")
        for line in ep.lines():
            typer.echo(line)
        typer.echo(f"models: {', '.join(srv.served)}; {source}; engine {engine}")
        if record is not None:
            typer.echo(
                f"recording every accepted activation to {record} "
                f"(at most {record_max_mb} MB / {record_max_files} files, then one log line and no more)"
            )
        if no_auth:
            typer.echo("access token: none (restricted endpoints are open: --no-auth)")
        elif access_token:
            typer.echo("access token: as given (header triton-access-token)")
        else:
            typer.echo(f"access token (header triton-access-token, for statistics etc.): {ep.access_token}")
        for flag, on in (("--no-http-guard", http_guard), ("--no-grpc-guard", grpc_guard)):
            if not on:
                typer.echo(
                    f"warning: {flag}: Triton 2.51 is exposed (deeply nested JSON kills it; a batch of 0 "
                    "fails the requests batched with it; the access token is on its command line)",
                    err=True,
                )
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.echo(f"warning: listening on {host}: reachable from other machines", err=True)
        typer.echo("serving; Ctrl+C or SIGTERM stops", err=True)

    server.serve_forever(on_ready=ready)
    typer.echo("stopped", err=True)


def serve(
    model_repository: Path | None = typer.Option(
        None, "--model-repository", help="Serve an exported repository (veil export triton)."
    ),
    model: str = ModelOpt,
    weights: Path | None = typer.Option(
        None, "--weights", "-w", help="Serve tails built from this checkpoint; default: $VEIL_WEIGHTS."
    ),
    transform: list[Path] = typer.Option(
        [],
        "--transform",
        "-t",
        help="Transform directory: face_detection_noisy runs its tail; one made by veil.protect is "
        "served by its tail.pt (no --weights). Repeatable for veil.protect ones: one server, one model each.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes the server)."),
    http_port: int = typer.Option(8000, min=1, max=65535, help="HTTP port."),
    grpc_port: int = typer.Option(8001, min=1, max=65535, help="gRPC port."),
    metrics_port: int = typer.Option(8002, min=1, max=65535, help="Prometheus metrics port."),
    max_batch_size: int = typer.Option(8, min=1, max=1024, help="Largest batch the dynamic batcher forms."),
    max_queue_delay_us: int | None = typer.Option(
        None,
        min=0,
        max=1_000_000,
        help="How long the dynamic batcher holds a request for later ones to batch with (default: 0; "
        "requests that queue while every instance is busy are batched anyway).",
    ),
    instances: int = typer.Option(
        0,
        min=0,
        help="Model instances per tail (python engine: a process each; pytriton: a thread each); "
        "0 = auto (2 on a CPU with 2+ cores, else 1).",
    ),
    access_token: str | None = typer.Option(
        None, envvar="VEIL_ACCESS_TOKEN", help="Token for restricted endpoints (default: generated)."
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="Leave restricted endpoints open."),
    triton_log: Path | None = typer.Option(None, help="Write Triton's own log to this file."),
    threads: int | None = typer.Option(
        None,
        min=0,
        help="PyTorch CPU threads (python engine: per model instance; default or 0: cores / instances).",
    ),
    device: str = typer.Option("cpu", help="Device for the tails (cpu, cuda)."),
    eager: bool = typer.Option(
        False, "--eager", help="Do not freeze the TorchScript tails (pytriton engine: run them eagerly)."
    ),
    engine: str = typer.Option(
        "python",
        help="python: Triton's Python-backend stub runs the tails (fastest); "
        "pytriton: this process runs them behind PyTriton's proxy.",
    ),
    record: Path | None = typer.Option(
        None, help="python engine: save every accepted activation here as .npy (audit what arrives)."
    ),
    record_max_mb: int = typer.Option(
        1024, min=1, help="--record quota: stop recording after this many MB (split across model instances)."
    ),
    record_max_files: int = typer.Option(
        10_000, min=1, help="--record quota: stop recording after this many files."
    ),
    http_guard: bool = typer.Option(
        True,
        "--http-guard/--no-http-guard",
        help="Check HTTP requests in front of Triton 2.51 (nested JSON, batch sizes, paths, token).",
    ),
    grpc_guard: bool = typer.Option(
        True,
        "--grpc-guard/--no-grpc-guard",
        help="Check gRPC requests in front of Triton 2.51 (message size, batch sizes, token).",
    ),
) -> None:
    """Start Triton serving face_detection_base and face_detection_noisy (or a protected model's tail)."""
    check_writable(triton_log, "--triton-log", folder=False)
    check_writable(record, "--record")
    if len(transform) > 1:  # each carries its tail; each is checked against --model when one is named
        for t in transform:
            tail_source(model, weights, t, "serve")
    elif model_repository is None:
        weights = tail_source(model, weights, transform[0] if transform else None, "serve")
    elif model.strip().lower() != "faceboxes":
        raise VeilError(
            "--model builds tails from --weights or checks --transform: not with --model-repository"
        )
    set_threads(threads)
    run_server(
        model_repository=model_repository,
        weights=weights,
        transform=transform,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        access_token=access_token,
        no_auth=no_auth,
        triton_log=triton_log,
        device=device,
        eager=eager,
        engine=engine,
        threads=threads,
        record=record,
        record_max_mb=record_max_mb,
        record_max_files=record_max_files,
        http_guard=http_guard,
        grpc_guard=grpc_guard,
    )
