"""Option-level checks shared by every command: finite numbers in range, outputs that can be written.

Kept free of heavy imports (no torch) so that ``veil --help`` and every usage error stay fast.
Integers use typer's own ``min=``/``max=`` (shown in ``--help`` as ``[x>=1]``); floats go through
:func:`FloatOpt`, because a float range alone lets ``nan`` (and ``inf``, with one bound) through.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from veil.errors import VeilError

#: Largest square ``--size``: the network input's side (the same bound as ``veil.imageio.MAX_INPUT_SIDE``,
#: repeated here so the CLI does not import torch to print its help).
MAX_SIZE = 4096


def _bound_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """Like click's range text: ``x>0``, ``0<=x<1``."""
    if high is None and low is not None:
        return f"x{'>' if low_open else '>='}{low:g}"
    left = "" if low is None else f"{low:g}{'<' if low_open else '<='}"
    right = "" if high is None else f"{'<' if high_open else '<='}{high:g}"
    return f"{left}x{right}"


def finite(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[float | None], float | None]:
    """A typer callback refusing NaN, infinities and values outside [low, high] (open ends on request)."""
    bounds = _bound_text(low, high, low_open, high_open)

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            want = "a finite number" if bounds == "x" else f"a finite number with {bounds}"
            raise typer.BadParameter(f"must be {want}, got {value:g}")
        return value

    return check


def FloatOpt(  # reads like typer.Option, which it wraps
    default: Any,
    *param_decls: str,
    help: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    **kwargs: Any,
) -> Any:
    """``typer.Option`` for a float that must be finite and in range; the range is added to its help."""
    bounds = _bound_text(low, high, low_open, high_open)
    suffix = "" if bounds == "x" else f" [{bounds}]"
    return typer.Option(
        default,
        *param_decls,
        help=help + suffix,
        callback=finite(low, high, low_open=low_open, high_open=high_open),
        **kwargs,
    )


def check_size(value: int | None) -> int | None:
    """Callback for ``--size``: a multiple of 32 from 32 to :data:`MAX_SIZE` (FaceBoxes' stride)."""
    if value is not None and (value < 32 or value > MAX_SIZE or value % 32):
        raise typer.BadParameter(f"must be a multiple of 32 from 32 to {MAX_SIZE}, got {value}")
    return value


def check_counts(value: str | None) -> str | None:
    """Callback for ``--ks``: comma-separated repeat counts, 1 among them, each from 1 to 1024."""
    if value is None:
        return value
    try:
        ks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"must be whole numbers separated by commas, e.g. 1,4,16,64; got {value!r}"
        ) from None
    if 1 not in ks or any(k < 1 or k > 1024 for k in ks):
        raise typer.BadParameter(
            f"must include 1 and only counts from 1 to 1024, e.g. 1,4,16,64; got {value!r}"
        )
    return ",".join(str(k) for k in sorted(set(ks)))


def check_choices(choices: tuple[str, ...], extra: str = "all") -> Callable[[str | None], str | None]:
    """Callback for a comma-separated list drawn from ``choices`` (or ``extra`` alone)."""

    def check(value: str | None) -> str | None:
        if value is None:
            return value
        names = [v.strip() for v in value.split(",") if v.strip()]
        bad = [n for n in names if n not in choices and not (n == extra and len(names) == 1)]
        if bad or not names:
            raise typer.BadParameter(
                f"unknown {', '.join(bad) or 'empty list'}: choose from {', '.join(choices)} or {extra}"
            )
        return ",".join(choices) if names == [extra] else ",".join(names)

    return check


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(path: Path | None, option: str, *, folder: bool = True) -> None:
    """Refuse an output path that cannot be written, before any work: one line naming it and why.

    ``folder``: the output is a directory (created with its parents); otherwise a file. Nothing is
    created here, so a refused or failed run leaves nothing behind.
    """
    if path is None:
        return

    def fail(reason: str) -> None:
        raise VeilError(f"cannot write {option} {path}: {reason}")

    if path.exists():
        if folder and not path.is_dir():
            fail("it exists and is not a folder")
        if not folder and path.is_dir():
            fail("it is a folder; give a file name")
        target = path if folder else path.parent
    else:
        target = _nearest_existing(path.parent)
        if not target.is_dir():
            fail(f"{target} is not a folder ({os.strerror(errno.ENOTDIR)})")
    if not os.access(target, os.W_OK | os.X_OK):
        fail(f"{target} is not writable ({os.strerror(errno.EACCES)})")
