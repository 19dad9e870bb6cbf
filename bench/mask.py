"""Client-side cost of the mask-compliance release (head + noise) and the server round trip for crops.

    python bench/mask.py [--batch 1,16,64] [--rounds 15] [--reps 20] [--trips 30] [--json out.json]

1. In one interleaved run (rounds of: the clean classifier, the head, head + noise = the release, the
   full protected model locally), each timed ``reps`` calls per round on real face crops of the
   mask-scenes test half, one thread: the median per call over rounds and the client's share
   ``(head + noise) / clean classifier``. Interleaving keeps a shared machine's load from favouring one.
2. The round trip of a batch of crops through a real Triton on 127.0.0.1 (``VeilServer.from_transform``
   with the shipped default transform, gRPC and HTTP): ``client.infer`` = head + noise here, the wire,
   the tail there; median over ``trips`` calls, with the local release time of the same batch beside it
   (the client keeps one thread: Triton's two CPU instances share the machine with it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import veil
from _common import SHARED
from veil.mask_compliance.data import crops, load_faces
from veil.mask_compliance.model import load_classifier, to_input
from veil.mask_compliance.shipped import shipped_default


def per_call_ms(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def interleaved(q: veil.Protected, model: torch.nn.Module, x: torch.Tensor, rounds: int, reps: int) -> dict:
    jobs = {
        "clean": lambda: model(x),
        "head": lambda: q.head(x),
        "release": lambda: q.release(x),
        "protected": lambda: q.tail(q.release(x)),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    with torch.inference_mode():
        for fn in jobs.values():
            per_call_ms(fn, 3)  # warm-up
        for _ in range(rounds):
            for name, fn in jobs.items():
                times[name].append(per_call_ms(fn, reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return med | {"share": med["release"] / med["clean"]}


def round_trips(path: Path, q: veil.Protected, x_all: torch.Tensor, batches: list[int], trips: int) -> list:
    from veil.client import VeilClient
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch_size=64)
    rows = []
    with VeilServer.from_transform(path, config).start() as server:
        for protocol, url in (("grpc", server.endpoints.grpc), ("http", server.endpoints.http)):
            client = VeilClient(url, protocol, transform=q, timeout=60, max_batch_size=64)
            for batch in batches:
                x = x_all[:batch]
                for _ in range(3):
                    client.infer(x)  # warm-up (connection, Triton's first batches)
                trip, local = [], []
                with torch.inference_mode():
                    for _ in range(trips):
                        trip.append(per_call_ms(lambda x=x, c=client: c.infer(x), 1))
                        local.append(per_call_ms(lambda x=x: q.release(x), 1))
                rows.append(
                    {
                        "protocol": protocol,
                        "batch": batch,
                        "round_trip_ms": statistics.median(trip),
                        "release_ms": statistics.median(local),
                    }
                )
            client.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--trips", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = SHARED / "data" / "mask-scenes"
    if not (root / "annotations").is_dir():
        raise SystemExit(f"mask-scenes not found under {root} (set VEIL_SHARED to the shared folder)")
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(1)
    model = load_classifier().eval()
    path = shipped_default()
    assert path is not None
    q = veil.load(path, model)
    x_all = to_input(crops(load_faces(root, "test")[: max(batches)])[0])
    print(f"transform {path.name} (split {q.split}), 1 thread, median of {args.rounds} rounds x {args.reps}")
    print("| crops | clean classifier (ms) | head (ms) | head + noise (ms) | protected (ms) | client share |")
    print("|---|---|---|---|---|---|")
    local = []
    for batch in batches:
        med = interleaved(q, model, x_all[:batch], args.rounds, args.reps)
        local.append({"batch": batch} | med)
        print(
            f"| {batch} | {med['clean']:.2f} | {med['head']:.2f} | {med['release']:.2f} | "
            f"{med['protected']:.2f} | {med['share']:.0%} |"
        )
    trips = round_trips(path, q, x_all, batches, args.trips)
    print(f"\nround trip through Triton on 127.0.0.1 (client.infer, median of {args.trips})")
    print("| protocol | crops | round trip (ms) | of which the release here (ms) |")
    print("|---|---|---|---|")
    for r in trips:
        print(f"| {r['protocol']} | {r['batch']} | {r['round_trip_ms']:.2f} | {r['release_ms']:.2f} |")
    if args.json is not None:
        report = {"transform": path.name, "split": q.split, "alpha": q.alpha, "local": local, "server": trips}
        args.json.write_text(json.dumps(report, indent=1))
        print(f"-> {args.json}")


if __name__ == "__main__":
    main()
