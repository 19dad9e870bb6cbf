"""Typed errors with advice: every user-facing failure is one line saying what is wrong and what to do."""

from __future__ import annotations


class VeilError(Exception):
    """Base class for errors a user can act on; the CLI prints them as a single line."""


class CheckpointError(VeilError):
    """A weights file is missing, truncated, corrupt, foreign, or fails its checksum."""


class UnknownModelError(VeilError):
    """A model name that the registry does not know."""


class DatasetError(VeilError):
    """An annotation file is malformed or images are missing."""


class InputError(VeilError):
    """An input tensor or image has the wrong shape, dtype or content."""


class SplitPointError(VeilError):
    """A split point that the model does not offer."""


class TransformError(VeilError):
    """A transform artifact that is missing, corrupt, or made for other base weights or shapes."""


class ServingError(VeilError):
    """The Triton side: exporting, starting or reaching a server, or a request it refused."""


def brief(text: object, limit: int = 160) -> str:
    """``text`` on one line (whitespace collapsed), cut at a word boundary with "…" when over ``limit`` chars.

    For quoting a library's exception inside veil's own one-line error without cutting a word in half.
    """
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[: max(1, limit - 1)]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"
