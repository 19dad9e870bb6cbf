"""File modes for what veil writes: user outputs follow the umask, like any file a program creates.

Atomic writes go through ``tempfile.mkstemp`` / ``mkdtemp``, which create 0600 files and 0700 folders; after
writing, :func:`follow_umask` gives the result the mode ``open()`` / ``mkdir()`` would have given it. Only the
activations ``veil serve --record`` keeps stay 0600 (they are what clients sent).
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no thread ever sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str], directory: bool = False) -> None:
    """chmod ``path`` to 0666 (files) or 0777 (folders) minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())
