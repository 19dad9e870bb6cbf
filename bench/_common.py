"""Small helpers shared by the benchmarks: timing, the test image, the shared folder."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from veil.imageio import load_image

SHARED = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WEIGHTS = SHARED / "weights" / "faceboxes" / "FaceBoxes.pth"
PHOTO = (
    SHARED
    / "data"
    / "widerface-sample"
    / "WIDER_val"
    / "images"
    / "12--Group"
    / "12_Group_Group_12_Group_Group_12_478.jpg"
)


def full_hd_image() -> torch.Tensor:
    """A real photo (WIDER FACE val) brought to 1920x1080, the reference design's frame size."""
    if not PHOTO.is_file():
        raise SystemExit(f"benchmark image not found: {PHOTO} (set VEIL_SHARED to the shared folder)")
    return TF.resize(load_image(PHOTO), [1080, 1920], antialias=True).contiguous()


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that also waits for the GPU, so a timer around it measures the work, not its launch."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def median_ms(fn: Callable[[], object], runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def interleaved_median_ms(
    fns: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median wall time of each ``fn``, the calls taken in turn (a, b, c, a, b, c, ...).

    On a shared, noisy machine a slow spell then hits every variant alike, so their ratio holds
    even when the absolute times drift.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(runs):
        names = list(fns)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000.0 for name, t in times.items()}
