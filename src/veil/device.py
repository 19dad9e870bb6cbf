"""Where a run computes: one validator for every ``--device``, so a bad name is one line, not a CUDA trace."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from veil.errors import InputError


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, and a CUDA one only where a GPU is visible."""
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise InputError(f"--device must be cpu or cuda (or cuda:N), got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible to PyTorch here; use --device cpu")
    return device


def dist_info() -> tuple[int, int]:
    """(rank, world size); joins the gloo process group that ``torchrun`` (WORLD_SIZE > 1) set up."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
