"""Benchmark remote inference through a real Triton server (``veil serve``) on loopback.

    python bench/serve.py [--transform DIR | --stand-in] [--runs 20] [--seconds 10] [--json out.json]
    python bench/serve.py --soak [--soak-seconds 60]
    python bench/serve.py --baseline-src OLD/src   # + the same server from another checkout, interleaved

Batch 1, a real 1920x1080 photo at 1024x1024. Median latency of (a) local clean inference, (b) local
noisy inference, (c) noisy inference through the server over HTTP and gRPC (head + noise here, tail
there); then throughput with 1, 4 and 8 concurrent clients sending precomputed noisy activations (so the
server is what is measured) with dynamic batching on. The server runs in its own process, as a user
would run it. ``--soak``: 8 clients for 60 s, requests served, p50/p99 latency, failures, server memory.

By default: veil's default deployment, the shipped α=0.12 transform (its split, its head and noise
here, ``veil serve --transform`` there); ``--transform DIR`` measures another. ``--stand-in``: the
reference design's interface instead (split after RDCL, base weights, a fresh Gaussian sample per call
of scale ``--sigma`` standing in for a trained transform).

Client and server share this machine's cores, so this process runs with ``GOMP_SPINCOUNT=10000``
(unless the environment sets it or ``OMP_WAIT_POLICY``): libgomp's default spins an idle PyTorch
thread for milliseconds after the head has run, on the core the server's tail needs. It applies to
the local runs alike (measured neutral for local clean inference); a client on its own machine has
no such contention.
"""

from __future__ import annotations

import argparse
import json
import os

if not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):  # before torch loads libgomp
    os.environ["GOMP_SPINCOUNT"] = "10000"
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WEIGHTS, full_hd_image, interleaved_median_ms
from veil.client import VeilClient
from veil.faceboxes.detect import Detector, build_detector
from veil.faceboxes.pipeline import load_pipeline
from veil.serve.server import free_ports

DEFAULT_TRANSFORM = (
    Path(__file__).resolve().parents[1] / "src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12"
)


class GaussianNoise(nn.Module):
    """A fresh N(0, sigma^2) sample per call: stands in for a trained transform's sampling cost."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


def start_server(
    threads: int | None,
    instances: int | None,
    transform: Path | None,
    eager: bool = False,
    engine: str = "python",
    src: Path | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[str], int, int]:
    """``veil serve`` in a child process (from ``src`` if given); returns once it prints its endpoints."""
    http_port, grpc_port, metrics_port = free_ports(3)
    cmd = [
        sys.executable,
        "-c",
        "from veil.cli.main import main; main()",
        "serve",
        "--weights",
        str(WEIGHTS),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--triton-log",
        os.devnull,
        "--engine",
        engine,
    ]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if instances is not None:
        cmd += ["--instances", str(instances)]
    if transform is not None:
        cmd += ["--transform", str(transform)]
    if eager:
        cmd.append("--eager")
    env = dict(os.environ)
    if src is not None:  # e.g. `git archive <commit> src | tar -x -C OLD`: compare two versions
        env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    proc = subprocess.Popen(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("access token"):
            return proc, http_port, grpc_port
    raise SystemExit(f"veil serve did not start (exit {proc.wait()})")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server, tritonserver, backend stubs)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return total / 1024


def load(url: str, protocol: str, act: torch.Tensor, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each its own connection, sending ``act`` back to back for ``seconds``."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    fails = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]  # set for real once every client is connected

    def work(i: int) -> None:
        with VeilClient(url, protocol, model="face_detection_noisy", allow_clean=True, timeout=60) as c:
            c.infer(act)  # connect + warm up
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    c.infer(act)
                    lat[i].append(time.perf_counter() - t0)
                except Exception:
                    fails[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = sorted(x for xs in lat for x in xs)
    pct = (
        (lambda q: flat[min(len(flat) - 1, int(q * len(flat)))] * 1000) if flat else (lambda q: float("nan"))
    )
    return {
        "clients": clients,
        "requests": len(flat),
        "failed": sum(fails),
        "images_per_s": len(flat) / wall,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "seconds": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0, help="Duration of each throughput run.")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads of the local (client) side.")
    ap.add_argument(
        "--server-threads", type=int, default=None, help="veil serve --threads (default: its own)."
    )
    ap.add_argument("--instances", type=int, default=None, help="veil serve --instances (default: auto).")
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--transform", type=Path, default=DEFAULT_TRANSFORM, help="Serve and send through it.")
    ap.add_argument("--stand-in", action="store_true", help="RDCL split + Gaussian noise, no transform.")
    ap.add_argument("--eager", action="store_true", help="The server's TorchScript tails are not frozen.")
    ap.add_argument("--engine", choices=["python", "pytriton"], default="python", help="veil serve --engine.")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="grpc", help="For throughput and soak.")
    ap.add_argument("--soak", action="store_true", help="Only the soak run: 8 clients for --soak-seconds.")
    ap.add_argument("--soak-seconds", type=float, default=60.0)
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="Also serve from this src folder (another version) and time it interleaved with this one.",
    )
    ap.add_argument("--serve-args", default="", help="Extra veil serve arguments (this version only).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.stand_in:
        args.transform = None
    torch.set_num_threads(args.threads)
    if not WEIGHTS.is_file():
        raise SystemExit(f"weights not found: {WEIGHTS} (set VEIL_SHARED)")

    img = full_hd_image()
    clean = build_detector(WEIGHTS)
    if args.transform is None:
        noise: nn.Module = GaussianNoise(args.sigma)
        noisy = Detector(clean.head, clean.tail, noise=noise)
    else:
        noisy = load_pipeline(WEIGHTS, args.transform, size=(1024, 1024))
        assert noisy.noise is not None  # a transform's pipeline always adds its noise
        noise = noisy.noise
    with torch.inference_mode():
        act = noisy.release(noisy.preprocess([img])).contiguous()
    proc, http_port, grpc_port = start_server(
        args.server_threads, args.instances, args.transform, args.eager, args.engine,
        extra=tuple(args.serve_args.split()),
    )  # fmt: skip
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    base_proc = None
    if args.baseline_src is not None and not args.soak:
        base_proc, base_http, base_grpc = start_server(
            args.server_threads, args.instances, args.transform, args.eager, args.engine, args.baseline_src
        )
        urls |= {"http_baseline": f"127.0.0.1:{base_http}", "grpc_baseline": f"127.0.0.1:{base_grpc}"}
    report: dict[str, Any] = {
        "threads": args.threads,
        "server_threads": args.server_threads or "auto",
        "instances": args.instances or "auto",
        "cpus": os.cpu_count(),
        "protocol": args.protocol,
        "transform": str(args.transform) if args.transform else None,
        "server_tails": "torchscript" if args.eager else "torchscript (frozen)",
        "engine": args.engine,
    }
    try:
        if args.soak:
            load(urls[args.protocol], args.protocol, act, 8, 5.0)  # warm-up: allocator pools, batch shapes
            rss0 = tree_rss_mb(proc.pid)
            samples: list[float] = []
            sampler_stop = threading.Event()

            def sample() -> None:
                while not sampler_stop.wait(5.0):
                    samples.append(tree_rss_mb(proc.pid))

            threading.Thread(target=sample, daemon=True).start()
            soak = load(urls[args.protocol], args.protocol, act, 8, args.soak_seconds)
            sampler_stop.set()
            soak.update(rss_start_mb=rss0, rss_end_mb=tree_rss_mb(proc.pid), rss_samples_mb=samples)
            report["soak"] = soak
            print(
                f"soak: 8 {args.protocol} clients for {soak['seconds']:.0f} s: "
                f"{soak['requests']} requests served, "
                f"{soak['failed']} failed, p50 {soak['p50_ms']:.1f} ms, p99 {soak['p99_ms']:.1f} ms, "
                f"{soak['images_per_s']:.1f} images/s"
            )
            print(
                f"server memory (all its processes, after a 5 s warm-up): {rss0:.0f} MB at start, "
                f"{soak['rss_end_mb']:.0f} MB at end; every 5 s: {' '.join(f'{m:.0f}' for m in samples)}"
            )
        else:
            clients = {
                name: VeilClient(url, name.split("_")[0], noise=noise, head=noisy.head, timeout=60)
                for name, url in urls.items()
            }
            ms = interleaved_median_ms(
                {
                    "local_clean": lambda: clean.detect([img]),
                    "local_noisy": lambda: noisy.detect([img]),
                    **{f"server_{p}": partial(c.detect, [img]) for p, c in clients.items()},
                },
                args.runs,
            )
            for c in clients.values():
                c.close()
            report["latency_ms"] = ms
            runs = [load(urls[args.protocol], args.protocol, act, n, args.seconds) for n in (1, 4, 8)]
            report["throughput"] = runs
            print(
                f"veil serve benchmark: 1920x1080 photo -> 1024x1024, batch 1, {args.threads} threads, "
                f"{os.cpu_count()} CPUs, loopback; "
                + (f"transform {args.transform}" if args.transform else "RDCL split, Gaussian noise")
                + f"; engine {args.engine}; GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}"
            )
            for k, v in ms.items():
                print(f"  {k:<14}{v:>9.1f} ms (median of {args.runs}, variants interleaved)")
            for r in runs:
                print(
                    f"  {r['clients']} {args.protocol} client(s): {r['images_per_s']:7.1f} images/s, "
                    f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['failed']} failed"
                )
            ratios = {
                f"server_{name}/local_clean": ms[f"server_{name}"] / ms["local_clean"] for name in clients
            } | {
                "local_noisy/local_clean": ms["local_noisy"] / ms["local_clean"],
                "throughput_8/1": runs[2]["images_per_s"] / runs[0]["images_per_s"],
                "throughput_4/1": runs[1]["images_per_s"] / runs[0]["images_per_s"],
            }
            report["ratios"] = ratios
            for k, v in ratios.items():
                print(f"  {k:<26}{v:6.2f}")
            print("  goals: server/local_clean <= 1.3, throughput_8/1 >= 1.5")
    finally:
        for p in (proc, base_proc):
            if p is not None:
                p.terminate()
                p.wait(timeout=60)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
