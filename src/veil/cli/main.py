"""The ``veil`` command: one sub-command per module in this package."""

from __future__ import annotations

import sys

import typer

from veil.cli import (
    audit_cmd,
    demo_cmd,
    detect_cmd,
    eval_cmd,
    export_cmd,
    k8s_cmd,
    serve_cmd,
    train_cmd,
    tune_cmd,
)
from veil.errors import VeilError

app = typer.Typer(
    name="veil",
    help="Confidential inference: split a model, add learned noise locally, run the tail remotely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo_cmd.demo)
app.command("detect")(detect_cmd.detect)
app.command("audit")(audit_cmd.audit)
app.command("train")(train_cmd.train)
app.command("sweep")(train_cmd.sweep)
app.command("tune-tail")(tune_cmd.tune_tail)
app.add_typer(eval_cmd.app, name="eval")
app.command("serve")(serve_cmd.serve)
app.add_typer(export_cmd.app, name="export")
app.add_typer(k8s_cmd.app, name="k8s")


@app.command("models")
def models() -> None:
    """List the model names veil knows, with their split points."""
    from veil.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        typer.echo(f"{name}\tsplit points: {', '.join(spec.split_points)} (default {spec.default_split})")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()  # standalone mode: usage errors are printed by the CLI library itself
    except VeilError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
