"""Serving the tail on NVIDIA Triton: the model repository, an embedded server, the wire contract.

Import the submodules directly (``veil.serve.export``, ``veil.serve.server``); this package only
re-exports the contract constants so that ``import veil.serve`` stays cheap (no PyTriton import).
"""

from veil.serve.validate import (
    ACCESS_HEADER,
    ACTIVATION_DIMS,
    BASE_MODEL,
    INPUT_NAME,
    LOC_DIMS,
    LOC_NAME,
    MAX_BATCH_SIZE,
    NOISY_MODEL,
    NUM_ANCHORS,
    SCORES_DIMS,
    SCORES_NAME,
    check_activation,
)

__all__ = [
    "ACCESS_HEADER",
    "ACTIVATION_DIMS",
    "BASE_MODEL",
    "INPUT_NAME",
    "LOC_DIMS",
    "LOC_NAME",
    "MAX_BATCH_SIZE",
    "NOISY_MODEL",
    "NUM_ANCHORS",
    "SCORES_DIMS",
    "SCORES_NAME",
    "check_activation",
]
