"""Anchors, decoding, post-processing and the batched detector on real images."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from veil.faceboxes.detect import Detector, PostProcess, decode, priors
from veil.imageio import load_image, preprocess


def loop_priors(height: int, width: int) -> torch.Tensor:
    """FaceBoxes.PyTorch's anchor loop, written out plainly as the oracle for the vectorised version."""
    out = []
    for step, sizes in zip((32, 64, 128), ((32, 64, 128), (256,), (512,)), strict=True):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for s in sizes:
                offs = {32: [0, 0.25, 0.5, 0.75], 64: [0, 0.5]}.get(s)
                if offs is None:
                    out.append([(j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height])
                    continue
                for oy, ox in itertools.product(offs, offs):
                    out.append([(j + ox) * step / width, (i + oy) * step / height, s / width, s / height])
    return torch.tensor(out)


@pytest.mark.parametrize("size", [(1024, 1024), (700, 1000), (64, 96)])
def test_priors_match_reference_loop(size: tuple[int, int]) -> None:
    got = priors(*size)
    want = loop_priors(*size)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-7)


def test_priors_count_and_cache() -> None:
    assert priors(1024, 1024).shape == (21824, 4)
    assert priors(1024, 1024) is priors(1024, 1024)  # built once per input size


def test_decode_by_hand() -> None:
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    zero = decode(torch.zeros(1, 4), anchors)
    assert torch.allclose(zero, torch.tensor([[0.4, 0.45, 0.6, 0.55]]))
    loc = torch.tensor([[1.0, -1.0, math.log(2) / 0.2, 0.0]])
    # centre x moves by 0.1 * 0.2, y by -0.1 * 0.1; width doubles
    assert torch.allclose(decode(loc, anchors), torch.tensor([[0.32, 0.44, 0.72, 0.54]]), atol=1e-6)


def _one_face_outputs(score_logit: float) -> tuple[torch.Tensor, torch.Tensor]:
    loc = torch.zeros(1, 21824, 4)
    conf = torch.zeros(1, 21824, 2)
    conf[..., 0] = 5.0  # background everywhere
    conf[0, 100, 1] = score_logit
    conf[0, 100, 0] = 0.0
    return loc, conf


def test_postprocess_maps_boxes_to_original_pixels() -> None:
    img = torch.zeros(3, 480, 640, dtype=torch.uint8)
    batch = preprocess([img])
    loc, conf = _one_face_outputs(10.0)
    (dets,) = PostProcess()(loc, conf, batch)
    assert dets.shape == (1, 5)
    anchor = priors(1024, 1024)[100]
    want = torch.tensor([anchor[0] - anchor[2] / 2, anchor[1] - anchor[3] / 2] * 1) * torch.tensor([640, 480])
    assert torch.allclose(dets[0, :2], want, atol=1e-3)
    assert dets[0, 4] > 0.99


def test_postprocess_threshold_and_nms() -> None:
    batch = preprocess([torch.zeros(3, 64, 64, dtype=torch.uint8)], size=(1024, 1024))
    loc, conf = _one_face_outputs(-10.0)  # score ~ 0: below threshold
    assert PostProcess()(loc, conf, batch)[0].shape == (0, 5)
    loc = torch.zeros(1, 21824, 4)
    conf = torch.zeros(1, 21824, 2)
    conf[0, :16, 1] = 4.0  # the 16 dense 32-px anchors of one cell overlap heavily
    kept = PostProcess(threshold=0.5)(loc, conf, batch)[0]
    assert 1 <= kept.shape[0] < 16
    assert PostProcess(threshold=0.5, nms_iou=1.0)(loc, conf, batch)[0].shape[0] == 16


@pytest.fixture(scope="module")
def detector(faceboxes: torch.nn.Module) -> Detector:
    head, tail = faceboxes.split("rdcl")
    return Detector(head, tail)


def test_detects_the_face_in_a_real_photo(detector: Detector, fddb_sample: Path) -> None:
    img = load_image(fddb_sample / "originalPics/2002/07/19/big/img_160.jpg")
    dets = detector.detect([img])[0]
    strong = dets[dets[:, 4] > 0.5]
    assert strong.shape[0] == 1
    # FDDB ellipse centre for this image: (268.07, 113.45)
    cx, cy = (strong[0, 0] + strong[0, 2]) / 2, (strong[0, 1] + strong[0, 3]) / 2
    assert abs(cx - 268.07) < 15 and abs(cy - 113.45) < 20


def test_batched_equals_one_by_one(detector: Detector, fddb_sample: Path) -> None:
    paths = sorted((fddb_sample / "originalPics").rglob("*.jpg"))[:3]
    images = [load_image(p) for p in paths]
    batched = detector.detect(images)
    for img, dets in zip(images, batched, strict=True):
        single = detector.detect([img])[0]
        assert single.shape == dets.shape
        assert torch.allclose(single, dets, atol=1e-3)


def test_own_scale_mode_pads_and_maps_back(faceboxes: torch.nn.Module, fddb_sample: Path) -> None:
    head, tail = faceboxes.split("rdcl")
    det = Detector(head, tail, size=None, resize=1.0)
    paths = sorted((fddb_sample / "originalPics").rglob("*.jpg"))[:2]
    images = [load_image(p) for p in paths]
    assert images[0].shape != images[1].shape
    batched = det.detect(images)
    for img, dets in zip(images, batched, strict=True):
        single = det.detect([img])[0]
        strong_b, strong_s = dets[dets[:, 4] > 0.5], single[single[:, 4] > 0.5]
        assert strong_b.shape == strong_s.shape
        assert torch.allclose(strong_b[:, :4], strong_s[:, :4], atol=2.0)
        assert (dets[:, 0] < img.shape[2]).all() and (dets[:, 1] < img.shape[1]).all()
