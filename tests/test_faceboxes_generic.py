"""FaceBoxes on the generic path: ``veil.protect`` cuts it where it declares, and a shipped FaceBoxes
transform becomes a ``Protected`` that is saved, loaded, served by a real Triton and detected with.

The AP of the fddb-sample through ``VeilClient.infer`` on the real server equals the AP the FaceBoxes
pipeline computes from the very same releases (same head, same noise tensors, same tail).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import veil
from veil import assets
from veil.client import VeilClient
from veil.errors import SplitPointError, TransformError
from veil.faceboxes.data import load_dataset
from veil.faceboxes.eval.runner import evaluate
from veil.faceboxes.generic import NAME, from_transform, protect_faceboxes
from veil.faceboxes.model import SPLIT_POINTS
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.registry import create_model
from veil.faceboxes.shipped import shipped_transforms
from veil.serve.server import ServerConfig, VeilServer, free_ports

WEIGHTS = assets.default_weights()


def test_protect_cuts_faceboxes_where_it_declares() -> None:
    model = create_model("faceboxes", WEIGHTS)
    x = torch.randn(1, 3, 128, 128) * 60
    assert veil.split_points(model, x) == list(SPLIT_POINTS)
    p = protect_faceboxes(WEIGHTS, split="inception2", size=128)
    with torch.no_grad():
        want, got = model(x), p.tail(p.head(x))
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert p.release(x).shape == (1, 128, 4, 4)
    with pytest.raises(SplitPointError, match=r"did you mean 'inception3'.*declares rdcl"):
        veil.protect(model, split="inception4", example=x)


@pytest.mark.slow
def test_shipped_transform_served_on_the_generic_path(tmp_path: Path) -> None:
    shipped = shipped_transforms()[0.12]
    q0 = from_transform(shipped, WEIGHTS)
    pipe = load_pipeline(WEIGHTS, shipped)
    x = pipe.preprocess([torch.randint(0, 255, (3, 300, 400), dtype=torch.uint8)]).tensor
    with torch.no_grad():  # same head, same noise tensors, same tail as FaceBoxes' own pipeline
        assert (q0.head(x) - pipe.head(x)).abs().max() < 1e-4
        r = q0.release(x)
        assert all((a - b).abs().max() < 1e-4 for a, b in zip(q0.tail(r), pipe.tail(r), strict=True))
    assert torch.equal(q0.noise.mu, pipe.noise.mu) and torch.equal(q0.noise.sigma(), pipe.noise.sigma())

    out = tmp_path / "fb-0.12"
    q0.save(out)
    model = create_model("faceboxes", WEIGHTS)
    q = veil.load(out, model)
    assert q.meta["wire_spec"]["shape"] == [128, 32, 32] and q.meta["wire_spec"]["dynamic"] == [1, 2]
    with pytest.raises(TransformError):
        veil.load(out, create_model("faceboxes"))  # other weights: another model

    sample = load_dataset(assets.sample_dataset())
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, instances=1)
    with VeilServer.from_transform(out, config).start() as server:
        assert list(server.served) == [f"{NAME}_noisy"]
        client = VeilClient(server.endpoints.grpc, "grpc", transform=q, timeout=60)
        local: list[torch.Tensor] = []

        def remote(pixels: list[torch.Tensor]) -> list[torch.Tensor]:
            batch = pipe.preprocess(pixels)
            loc, conf = client.infer(batch.tensor)
            with torch.no_grad():
                local.extend(pipe.post(*pipe.tail(torch.from_numpy(client.last_sent)), batch))
            return pipe.post(loc, conf, batch)

        result, preds = evaluate(sample, remote, progress=False)
        client.close()
    for pred, mine in zip(preds, local, strict=True):
        assert pred.detections.shape == tuple(mine.shape)
        assert abs(pred.detections - mine.double().numpy()).max() < 1e-3
    assert result.images == 7 and 0.6 <= result.pooled_ap <= 1.0, result.pooled_ap
