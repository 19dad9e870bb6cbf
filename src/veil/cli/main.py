"""The ``veil`` command: one sub-command per module in this package."""

from __future__ import annotations

import sys

import typer

from veil.cli import detect_cmd, eval_cmd, k8s_cmd
from veil.errors import VeilError

app = typer.Typer(
    name="veil",
    help="Confidential inference: split a model, add learned noise locally, run the tail remotely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("detect")(detect_cmd.detect)
app.add_typer(eval_cmd.app, name="eval")
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
        app(standalone_mode=False)
    except VeilError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
