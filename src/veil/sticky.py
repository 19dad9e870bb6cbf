"""Opt-in sticky noise: the same input always gets the same noise, different inputs unrelated noise.

Fresh noise (the default) lets a receiver who gets the *same* image K times average the K releases: the
noise's std falls as 1/sqrt(K) and the reconstruction attack improves with K (``veil audit``'s K > 1 rows).
Sticky noise removes that gain for byte-identical repeats. The noise of a sample is derived from a secret
key that never leaves the client and from the sample's bytes, through a keyed pseudo-random function
(HMAC-SHA256, RFC 2104, expanded with SHAKE-256, FIPS 202), the way deterministic signatures derive their
nonce from the private key and the message (RFC 6979)::

    seed_i = HMAC-SHA256(key, "veil-sticky-v1" | dtype | shape | bytes of sample i)[:8] >> 1   (63 bits)
    eps_i  = Box-Muller(SHAKE-256("veil-sticky-eps-v1" | seed_i))                            (N(0, 1))

so repeating an input releases the same tensor (averaging K of them gains nothing), while any other input,
even one flipped bit away, gets noise that is independent for anyone without the key. Marginally every
release is still one draw from N(x + mu, sigma^2) (suppressed elements: mu), the distribution the transform
was audited with: the transform and its release digest do not change, and neither does the server.

What it costs: repeats become *linkable* (two identical releases say "same input"); what it does not buy:
a re-encoded, resized or next-frame image is a different input and gets fresh, independent noise, so
averaging near-duplicates (video frames) is not prevented. ``veil.audit.repeats`` measures both sides.

The hashed input is the client's input to the head, per sample (dtype, shape and contiguous CPU bytes), so a
sample's seed, and its noise (drawn from its own stream), does not depend on the batch it travels in.

Why 63 bits: the seed is a secret only the key can produce; guessing it takes 2^63 tries, and two different
inputs share a seed with probability n^2 / 2^64 over n inputs (5e-8 for a million, 5e-4 for 10^8), when
the difference of their releases would show the difference of their activations. The seed is expanded with
SHAKE-256, not by seeding a ``torch.Generator``: torch's CPU generator (MT19937) keeps only the low 32
bits of a seed, so its noise would come from one of 2^32 streams, few enough to search.

The key never leaves the client: it is not sent, logged, printed nor stored in a transform; only seeds
derived from it are used, locally. Keep it in a file only you can read (``veil keygen``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from veil.entropy import normal_from_words
from veil.errors import InputError

KEY_BYTES = 32
_TAG = b"veil-sticky-v1\x00"
_EPS_TAG = b"veil-sticky-eps-v1\x00"


def new_key() -> bytes:
    """A fresh 32-byte key from the OS's cryptographic random source."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: object) -> bytes:
    """``key`` as bytes, or a one-line refusal (not bytes, or shorter than 32 bytes)."""
    if not isinstance(key, bytes | bytearray):
        raise InputError(
            f"a sticky key is bytes (veil.sticky.load_key(path) or new_key()), not {type(key).__name__}"
        )
    if len(key) < KEY_BYTES:
        raise InputError(
            f"a sticky key needs at least {KEY_BYTES} bytes, this one has {len(key)}: make one with "
            "`veil keygen --out FILE` (or veil.sticky.new_key())"
        )
    return bytes(key)


def load_key(path: str | Path) -> bytes:
    """The key stored in ``path`` (raw bytes, at least 32), refused in one line if missing, short or exposed.

    A key file that the group or others can read is refused (as ssh refuses such a private key): anyone who
    can read it can reproduce the noise of every image sent with it. Fix with ``chmod 600 FILE``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sticky key file {path} not found: make one with `veil keygen --out {path}`")
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise InputError(
                f"sticky key file {path} is readable by others (mode {mode:o}): run `chmod 600 {path}`"
            )
    data = path.read_bytes()
    if len(data) < KEY_BYTES:
        raise InputError(
            f"sticky key file {path} holds {len(data)} bytes, a key needs at least {KEY_BYTES}: make a new "
            f"one with `veil keygen --out FILE`"
        )
    return data


def write_key(path: str | Path, key: bytes | None = None) -> bytes:
    """Write ``key`` (default: a new one) to ``path`` with mode 0600, atomically; never overwrites.

    The bytes go to a private temporary file in the same folder, are flushed to disk, then linked to
    ``path`` (``os.link`` fails if it exists), so ``path`` is never half-written nor replaced.
    """
    key = check_key(new_key() if key is None else key)
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise InputError(
            f"{path} exists: refusing to overwrite a key (remove it first, or pick another path)"
        )
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist: create it first")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InputError(f"{path} exists: refusing to overwrite a key") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key


def sticky_seeds(key: bytes, x: Tensor) -> list[int]:
    """One 63-bit seed per sample of the batch ``x``: HMAC-SHA256 of the sample's dtype, shape and bytes.

    The same sample gives the same seed under the same key whatever batch it is in; another key, another
    sample, or one flipped byte gives an unrelated one.
    """
    key = check_key(key)
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise InputError("sticky seeds need a batch tensor (N, ...) with N >= 1")
    cpu = x.detach().to("cpu").contiguous()
    head = _TAG + str(cpu.dtype).encode() + b"\x00" + ",".join(map(str, cpu.shape[1:])).encode() + b"\x00"
    raw = cpu.reshape(cpu.shape[0], -1).view(torch.uint8)  # any dtype: its bytes as they are in memory
    seeds = []
    for i in range(cpu.shape[0]):
        mac = hmac.new(key, head, hashlib.sha256)
        mac.update(raw[i].numpy().data)  # the buffer itself, no copy
        seeds.append(int.from_bytes(mac.digest()[:8], "big") >> 1)
    return seeds


def sticky_eps(
    shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype, device: torch.device | str
) -> Tensor:
    """Standard normal noise [len(seeds), *shape]: sample i's from its own SHAKE-256 stream of ``seeds[i]``.

    Box-Muller as for fresh noise (:func:`veil.entropy.normal_from_words`), computed on the CPU, so the same
    seed gives the same noise on any device and in any batch; a stream is cryptographic, its seed cannot be
    recovered from the noise.
    """
    n = math.prod(int(s) for s in shape)
    pairs = (n + 1) // 2
    rows = []
    for seed in seeds:
        if not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InputError(f"sticky seeds are integers in [0, 2^63), got {seed!r}")
        stream = hashlib.shake_256(_EPS_TAG + seed.to_bytes(8, "big")).digest(8 * pairs)
        rows.append(np.frombuffer(stream, dtype="<u4"))
    words = np.stack(rows) if rows else np.zeros((0, 2 * pairs), dtype=np.uint32)
    eps = normal_from_words(words, n)
    return eps.reshape(len(rows), *shape).to(device=device, dtype=dtype)


__all__ = ["KEY_BYTES", "check_key", "load_key", "new_key", "sticky_eps", "sticky_seeds", "write_key"]
