"""What drawing release noise from ``os.urandom`` costs against the old seeded torch generator (one run,
interleaved, medians; the machine is noisy, so read the ratio).

    .venv/bin/python bench/entropy.py [--runs 60]

Shapes: FaceBoxes' 1x128x32x32 release, a batch of 16, mask-compliance's 64x96x2x2 and a 64x64 vector batch.
"""

from __future__ import annotations

import argparse
import json
import secrets

import torch

from _common import interleaved_median_ms
from veil.entropy import secure_normal

SHAPES = {
    "faceboxes 1x128x32x32": (1, 128, 32, 32),
    "faceboxes 16x128x32x32": (16, 128, 32, 32),
    "mask 64x96x2x2": (64, 96, 2, 2),
    "tabular 64x64": (64, 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator()
    rows = {}
    for name, shape in SHAPES.items():

        def old(shape: tuple[int, ...] = shape) -> torch.Tensor:
            return torch.randn(shape, generator=gen.manual_seed(secrets.randbits(63)))

        def new(shape: tuple[int, ...] = shape) -> torch.Tensor:
            return secure_normal(shape, torch.float32, "cpu")

        times = interleaved_median_ms({"seeded torch.randn": old, "os.urandom": new}, runs=args.runs)
        rows[name] = times | {"ratio": times["os.urandom"] / times["seeded torch.randn"]}
        print(
            f"{name}: seeded {times['seeded torch.randn']:.2f} ms, urandom {times['os.urandom']:.2f} ms, "
            f"x{rows[name]['ratio']:.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
