"""Client-side cost of the breast-cancer release (head + noise) as a share of local inference.

    python bench/tabular.py [--batch 1,171] [--rounds 15] [--reps 200]

In one interleaved run (rounds of: clean model, head, head + noise, the full protected model), each timed
``reps`` calls per round on batches of the 171 test rows, one thread: the median per call over rounds and
the client's share ``(head + noise) / clean model``. Interleaving keeps a shared machine's load from
favouring one of them. Prints a Markdown table (docs/tabular.md quotes it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import veil
from veil.models.public import build_model
from veil.tabular.data import rows
from veil.tabular.shipped import default_transform


def per_call_us(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,171")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model("breast-cancer-mlp")
    path = default_transform()
    assert path is not None
    q = veil.load(path, model)
    x_all = torch.from_numpy(rows("test").x)
    print(f"transform {path.name}, {torch.get_num_threads()} thread, median of {args.rounds} rounds")
    print("| batch | clean model (µs) | head (µs) | head + noise (µs) | protected (µs) | client share |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        x = x_all[:batch]
        jobs = {
            "clean": lambda x=x: model(x),
            "head": lambda x=x: q.head(x),
            "release": lambda x=x: q.release(x),
            "protected": lambda x=x: q.tail(q.release(x)),
        }
        times: dict[str, list[float]] = {k: [] for k in jobs}
        with torch.inference_mode():
            for fn in jobs.values():
                per_call_us(fn, 20)  # warm-up
            for _ in range(args.rounds):
                for name, fn in jobs.items():
                    times[name].append(per_call_us(fn, args.reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"| {batch} | {med['clean']:.1f} | {med['head']:.1f} | {med['release']:.1f} | "
            f"{med['protected']:.1f} | {med['release'] / med['clean']:.0%} |"
        )


if __name__ == "__main__":
    main()
