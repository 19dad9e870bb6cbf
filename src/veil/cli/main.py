"""The ``veil`` command: one sub-command per module in this package."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click >= 8.2
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore[no-redef,assignment,unused-ignore]

from veil.cli import (
    audit_cmd,
    demo_cmd,
    detect_cmd,
    eval_cmd,
    export_cmd,
    k8s_cmd,
    keygen_cmd,
    serve_cmd,
    sweep_cmd,
    train_cmd,
    tune_cmd,
)
from veil.cli.checks import FloatOpt
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
app.command("sweep")(sweep_cmd.sweep)
app.command("tune-tail")(tune_cmd.tune_tail)
app.add_typer(eval_cmd.app, name="eval")
app.command("serve")(serve_cmd.serve)
app.add_typer(export_cmd.app, name="export")
app.add_typer(k8s_cmd.app, name="k8s")
app.command("keygen")(keygen_cmd.keygen)


@app.callback()
def _options(
    max_image_mp: float | None = FloatOpt(
        None,
        "--max-image-mp",
        envvar="VEIL_MAX_IMAGE_MP",
        help="Refuse images whose header declares more megapixels than this, before decoding them "
        "(default: 50).",
        low=0,
        low_open=True,
        show_default=False,
    ),
) -> None:
    """Options for every command (before the command's name)."""
    if max_image_mp is not None:  # read by veil.imageio.max_image_pixels(), in this process only
        os.environ["VEIL_MAX_IMAGE_MP"] = repr(max_image_mp)


@app.command("models")
def models() -> None:
    """List the models veil knows: built-in, veil.register_model, and entry points (group veil.models)."""
    from veil.models.public import list_entries

    for entry in list_entries():
        line = f"{entry.name}\t{entry.source}"
        if entry.target:
            line += f" {entry.target}"
        if entry.error is not None:
            typer.echo(f"{line}\tbroken: {_one_line(entry.error)}")
            continue
        if entry.description:
            line += f"\t{_one_line(entry.description)}"
        if entry.split_points:
            note = entry.split_note or "no transform"
            line += f"\tsplit points: {', '.join(entry.split_points)} ({note})"
        elif entry.split:
            line += f"\tdefault split: {entry.split}"
        line += f"\ttask: {entry.task}"  # faceboxes: detect/eval/demo/sweep take it; generic: train + serve
        typer.echo(line)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback.

    Usage errors (an unknown option, a value out of range) are caught here too, rather than printed by
    the CLI library as a multi-line box, so every refusal reads ``error: ...`` on one line.
    """
    try:
        code = app(prog_name="veil", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # `veil` or `veil k8s` alone: the help text
        sys.exit(exc.exit_code)
    except UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        typer.echo(f"error: {where}{_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except VeilError as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
