"""Where a run computes: one validator for every ``--device``, so a bad name is one line, not a CUDA trace."""

from __future__ import annotations

import torch

from veil.errors import InputError


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, and a CUDA one only where a GPU is visible."""
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise InputError(f"--device must be cpu or cuda (or cuda:N), got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible to PyTorch here; use --device cpu")
    return device
