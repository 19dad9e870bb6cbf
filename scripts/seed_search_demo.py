"""Why fresh noise comes from ``os.urandom``: the search a receiver could run against seeded CPU noise.

Until stop 39, a release's noise came from ``torch.Generator().manual_seed(secrets.randbits(63))``. torch's
CPU generator keeps only the low 32 bits of a seed, so every release came from one of 2^32 noise streams. This
script plays the receiver against that old scheme on the shipped FaceBoxes default and a real photo:

1. the clean activation at the split is mostly exact zeros (a ReLU output), so on those elements
   ``(release - mu) / sigma`` *is* the noise;
2. a candidate seed is kept only if its first 64 noise values leave a non-negative remainder there;
3. the true 32-bit seed passes, random wrong ones do not, and with it the clean activation comes back.

It times step 2 per candidate (plain Python, one thread: a native or GPU search is much faster). veil now
draws every release from ``os.urandom`` (:mod:`veil.entropy`): there is no seed to search.

    .venv/bin/python scripts/seed_search_demo.py [--candidates 32768]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import PHOTO, WEIGHTS  # noqa: E402
from veil.client import VeilClient  # noqa: E402
from veil.faceboxes.shipped import SHIPPED_DIR  # noqa: E402
from veil.imageio import FACEBOXES_MEAN_BGR, load_image, preprocess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=1 << 15, help="random wrong seeds to test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    client = VeilClient(
        "127.0.0.1:9", transform=SHIPPED_DIR / "faceboxes-inception3-alpha0.12", weights=WEIGHTS
    )
    noise = client.noise
    seed = secrets.randbits(63)
    noise._seed = (
        seed  # the old scheme: a generator seeded per release (the seeded path still exists, for tests)
    )
    with torch.inference_mode():
        batch = preprocess([load_image(PHOTO)], size=(1024, 1024), mean_bgr=FACEBOXES_MEAN_BGR)
        clean = client.head(batch.tensor)
        released = noise(clean.clone())
    mu, sigma, keep = noise.mu.detach(), noise.sigma().detach(), noise.keep
    z = ((released - mu) / sigma)[0].flatten()  # clean / sigma + eps on kept elements
    first = int(keep.expand_as(released[0]).flatten().nonzero()[0])
    end = first + 64

    def fits(candidate: int) -> bool:
        eps = torch.randn(end, generator=torch.Generator().manual_seed(candidate))
        return bool((z[first:end] - eps[first:] >= -1e-4).all())

    true32 = seed & 0xFFFFFFFF
    wrong, start = 0, time.perf_counter()
    for _ in range(args.candidates):
        candidate = secrets.randbits(32)
        wrong += candidate != true32 and fits(candidate)
    per = (time.perf_counter() - start) / args.candidates
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(true32))
    recovered = torch.where(keep, released - mu - sigma * eps, clean)
    print(f"exact zeros in the clean activation: {float((clean == 0).float().mean()):.1%}")
    print(f"the true 32-bit seed fits: {fits(true32)}; wrong seeds that fit: {wrong} of {args.candidates}")
    print(
        f"{per * 1e6:.1f} us per candidate (Python, 1 thread): 2^32 candidates in {per * 2**32 / 3600:.1f} h"
    )
    print(
        f"clean activation recovered from the release: max error {float((recovered - clean).abs().max()):.2e}"
    )


if __name__ == "__main__":
    main()
