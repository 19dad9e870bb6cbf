"""veil: confidential inference by learned noise on a split model.

Data flows one way: image -> head -> noise -> wire -> tail -> boxes.
"""

from veil.errors import VeilError

__version__ = "0.1.0"
__all__ = ["VeilError", "__version__"]
