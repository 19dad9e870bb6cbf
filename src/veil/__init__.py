"""veil: confidential inference by learned noise on a split model.

Data flows one way: image -> head -> noise -> wire -> tail -> boxes.
"""

from typing import Any

from veil.errors import VeilError

__version__ = "0.1.0"
#: Public names loaded on first use (``import veil`` stays torch-free): name -> module that defines it.
_LAZY = {
    "export_triton": "veil.serve.generic",
}
__all__ = ["VeilError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'veil' has no attribute {name!r}")
