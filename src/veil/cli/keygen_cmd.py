"""``veil keygen``: a secret key for opt-in sticky noise (``--sticky-key`` where releases are sent).

:mod:`veil.sticky` explains the mode: with a key, the noise of an input is derived from the key and the
input's bytes, so sending the same image twice releases the same tensor (averaging repeats gains
nothing) while other images keep independent noise. The key stays on the client: never copy it to the server.
"""

from __future__ import annotations

from pathlib import Path

import typer

StickyKeyOpt = typer.Option(
    None,
    "--sticky-key",
    help="With --server: a key file from `veil keygen`. The noise of each image is then derived from the key "
    "and the image, so sending the same image again releases the same tensor (a receiver gains nothing by "
    "averaging repeats, but can tell they repeat); the key never leaves this machine. Default: fresh noise.",
    show_default=False,
)


def keygen(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Where to write the key (32 random bytes, mode 0600); an existing file is never overwritten.",
        show_default=False,
    ),
) -> None:
    """Write a new secret key for sticky noise (`--sticky-key FILE` on veil detect/eval --server)."""
    from veil.sticky import write_key

    write_key(out)
    typer.echo(f"wrote a 32-byte sticky-noise key to {out} (mode 600): keep it on the client, never share it")


def read_sticky_key(path: Path | None, server: str | None) -> bytes | None:
    """The key of ``--sticky-key`` (None without it), refused in one line without ``--server``."""
    if path is None:
        return None
    from veil.errors import VeilError
    from veil.sticky import load_key

    if server is None:
        raise VeilError("--sticky-key applies to releases sent to a server: add --server URL (or drop it)")
    return load_key(path)
