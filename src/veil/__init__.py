"""veil: confidential inference by learned noise on a split model.

Data flows one way: input -> head -> noise -> wire -> tail -> outputs. ``veil.protect`` does it for any
PyTorch model. The public names below are loaded on first use, so ``import veil`` stays torch-free.
"""

from typing import Any

from veil.errors import VeilError

__version__ = "0.1.0"
#: Public names loaded on first use (``import veil`` stays torch-free): name -> module that defines it.
_LAZY = {
    "export_triton": "veil.serve.generic",
    "protect": "veil.protection",
    "split_points": "veil.protection",
    "load": "veil.protection",
    "Protected": "veil.protection",
    "register_model": "veil.models.public",
}
__all__ = ["VeilError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veil' has no attribute {name!r}")
