"""Standard normal noise from the operating system's cryptographic random source, for every release.

Why not ``torch.randn`` with a freshly seeded generator: torch's CPU generator (MT19937) keeps only the low
32 bits of its seed (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` draw the same numbers), so noise drawn
that way comes from one of 2^32 streams. Where part of the clean activation is known (a ReLU output is
exactly zero in most places), a receiver can test candidate seeds against one release and, once one fits,
subtract the noise and recover the clean activation: a search of 2^32 candidates, hours on one core. Bytes
from ``os.urandom`` (the kernel's ChaCha20-based CSPRNG) have no seed to search and no state to recover.

The bytes become N(0, 1) by the Box-Muller transform on 24-bit uniforms in (0, 1], as torch's own CPU
``randn`` does: |eps| <= 5.77, beyond which N(0, 1) has mass 8e-9. :func:`normal_from_words` is shared
with the keyed, repeatable noise of :mod:`veil.sticky`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_SCALE24 = float(2**-24)


def normal_from_words(words: np.ndarray, n: int) -> Tensor:
    """``n`` standard normal float32 values per row of ``words`` (uint32 [rows, 2 * ceil(n / 2)]).

    Box-Muller on the top 24 bits of each word, in float32 numpy (single-threaded, so a busy machine's
    thread pools cannot stall it): about 2x the time of ``torch.randn`` on the CPU.
    """
    rows = words.shape[0]
    pairs = (n + 1) // 2
    w = np.asarray(words, dtype=np.uint32).reshape(rows, 2, pairs)
    u = ((w >> np.uint32(8)).astype(np.float32) + np.float32(1.0)) * np.float32(_SCALE24)  # (0, 1]
    radius = np.sqrt(np.float32(-2.0) * np.log(u[:, 0]))
    theta = np.float32(2.0 * math.pi) * u[:, 1]
    out = np.empty((rows, 2 * pairs), dtype=np.float32)
    np.multiply(radius, np.cos(theta), out=out[:, :pairs])
    np.multiply(radius, np.sin(theta), out=out[:, pairs:])
    return torch.from_numpy(out[:, :n] if 2 * pairs != n else out)


def secure_normal(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """A fresh tensor of ``shape`` with i.i.d. N(0, 1) values drawn from ``os.urandom``."""
    n = math.prod(int(s) for s in shape)
    if n == 0:
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    pairs = (n + 1) // 2
    words = np.frombuffer(os.urandom(8 * pairs), dtype="<u4").reshape(1, 2 * pairs)
    eps = normal_from_words(words, n)[0].reshape(tuple(int(s) for s in shape))
    return eps.to(device=device, dtype=dtype)


__all__ = ["normal_from_words", "secure_normal"]
