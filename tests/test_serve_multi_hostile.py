"""Two protected models on one Triton (``veil serve -t A -t B``): each model checks its own wire spec.

Requests shaped for the other model, batch 0, NaN, a dimension short and a rank too many are refused per
request on both protocols, and honest requests to both models, sent at the same time, are all answered
with what the local tails compute.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from test_generic_serve import make_transform
from veil.serve.server import ServerConfig, VeilServer, free_ports

pytestmark = pytest.mark.slow


def _send(client: Any, mod: Any, name: str, a: np.ndarray) -> np.ndarray:
    inp = mod.InferInput("INPUT__0", list(a.shape), "FP32")
    inp.set_data_from_numpy(a)
    return client.infer(name, [inp]).as_numpy("OUTPUT__0")


def test_two_models_refuse_each_others_releases(tmp_path: Path) -> None:
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    paths = {name: make_transform(name, tmp_path / name, steps=1) for name in ("mlp", "resnet")}
    wires = {"mlp": (64,), "resnet": (128, 8, 8)}
    tails = {n: torch.jit.load(str(p / "tail.pt")).eval() for n, p in paths.items()}
    rng = np.random.default_rng(0)
    good = {n: rng.standard_normal((2, *w)).astype(np.float32) for n, w in wires.items()}
    with torch.inference_mode():
        want = {n: tails[n](torch.from_numpy(good[n])) for n in wires}
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, instances=1)
    with VeilServer.from_transform(list(paths.values()), config).start() as server:
        assert sorted(server.served) == ["mlp_noisy", "resnet_noisy"]
        urls = [(th, server.endpoints.http), (tg, server.endpoints.grpc)]
        nan = good["resnet"].copy()
        nan[0, 0, 0, 0] = np.nan
        empty = {n: np.zeros((0, *w), np.float32) for n, w in wires.items()}
        bad = {  # the other model's release, batch 0, NaN, a feature short, a rank too many
            # (the ResNet wire's h and w are dynamic: its tail takes any spatial size, so 7 x 8 is a release)
            "mlp_noisy": [good["resnet"], empty["mlp"], good["mlp"][:, :-1], good["mlp"][None]],
            "resnet_noisy": [good["mlp"], empty["resnet"], nan, good["resnet"][:, :-1]],
        }
        failures: list[str] = []

        def honest(name: str, mod: Any, url: str) -> None:
            client = mod.InferenceServerClient(url)  # one client per thread (the HTTP one is gevent-bound)
            try:
                for _ in range(6):
                    got = _send(client, mod, f"{name}_noisy", good[name])
                    if np.abs(got - want[name].numpy()).max() >= 1e-4:
                        failures.append(f"{name}: wrong answer")
            except Exception as exc:  # an honest request failed: the point of the test
                failures.append(f"{name} via {mod.__name__}: {exc}")
            finally:
                client.close()

        threads = [threading.Thread(target=honest, args=(n, mod, url)) for n in wires for mod, url in urls]
        for t in threads:
            t.start()
        clients = [(mod, mod.InferenceServerClient(url)) for mod, url in urls]
        for mod, client in clients:
            for model, arrays in bad.items():
                for a in arrays:
                    with pytest.raises(InferenceServerException):
                        _send(client, mod, model, np.ascontiguousarray(a))
        for t in threads:
            t.join(timeout=120)
        assert not failures, failures
        for mod, client in clients:  # both still serving after every refusal
            for n in wires:
                assert np.abs(_send(client, mod, f"{n}_noisy", good[n]) - want[n].numpy()).max() < 1e-4
            client.close()
