"""White-box attacks of the audit (issue 36): the input map, rMLE, the hybrid and the dFIL bound.

Real parts throughout: the input map is checked against ``prepare`` (and FaceBoxes' ``preprocess``) on
the photos the package ships; the Fisher estimate against the exact trace of a convolution's
J^T Sigma^-1 J; the attacks run on the shipped mask-compliance MobileNetV3-Small cut at ``features.0``
(a nearly invertible 16x32x32 activation of 64x64 faces) on LFW face crops (skipped without ../shared),
with a decoder trained for a few steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import veil
from veil.audit.attack import AttackConfig, Attacker, NoiseSpec, train_attacker
from veil.audit.fisher import fisher_bound
from veil.audit.inputs import activations, prepare
from veil.audit.inversion import InversionConfig, invert
from veil.audit.metrics import ssim, to_unit
from veil.audit.whitebox import WhiteboxConfig, input_map, whitebox_measure
from veil.errors import InputError
from veil.imageio import list_images, load_image, preprocess

SAMPLES = Path(veil.__file__).resolve().parent / "assets" / "fddb-sample" / "originalPics"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255}
FACEBOXES = {"mean": [104.0, 117.0, 123.0], "channels": "BGR"}


@pytest.fixture(scope="module")
def photos() -> list[Tensor]:
    return [load_image(p) for p in list_images(SAMPLES)[:3]]


@pytest.mark.parametrize(
    ("norm", "channels"), [(IMAGENET, 3), (None, 3), ({"mean": 0.5, "std": 0.25}, 1), (FACEBOXES, 3)]
)
def test_input_map_equals_prepare(photos: list[Tensor], norm: Any, channels: int) -> None:
    spec = {"shape": [channels, 96, 80], "dtype": "float32", "normalisation": norm}
    want = prepare(photos, spec, (96, 80))
    got = torch.cat([input_map(spec, (96, 80))(img.unsqueeze(0).float() / 255) for img in photos])
    assert got.shape == want.shape == (3, channels, 96, 80)
    if norm is FACEBOXES:  # prepare resizes uint8 pixels there (whole grey levels), as preprocess does
        assert float((got - want).abs().max()) <= 1.0 + 1e-4
        assert float((got - want).abs().mean()) < 0.35
    else:
        assert float((got - want).abs().max()) < 1e-3 * float(want.abs().max())


def test_prepare_is_faceboxes_preprocess(photos: list[Tensor]) -> None:
    """FaceBoxes' record on the generic path gives exactly what its own pipeline feeds the network."""
    spec = {"shape": [3, 1024, 1024], "dtype": "float32", "normalisation": FACEBOXES}
    for size in (512, 300):  # up- and down-sampling of the 450-ish px photos
        want = torch.cat([preprocess([img], size=(size, size)).tensor for img in photos])
        assert torch.equal(prepare(photos, spec, (size, size)), want.contiguous())
    with pytest.raises(InputError, match="channels must be one of RGB, BGR, got 'BRG'"):
        prepare(photos, {**spec, "normalisation": {**FACEBOXES, "channels": "BRG"}}, (64, 64))


# -- the Fisher-information bound -----------------------------------------------------------------
def _linear_case(sigma_scale: float = 1.0, keep: Tensor | None = None) -> tuple[nn.Module, Tensor, NoiseSpec]:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2).eval()
    x = torch.rand(2, 3, 8, 8)
    sigma = (torch.rand(4, 1, 1) + 0.5) * sigma_scale
    keep = torch.ones(4, 1, 1, dtype=torch.bool) if keep is None else keep
    return conv, x, NoiseSpec(torch.randn(4, 1, 1), sigma, keep)


def _exact_dfil(conv: nn.Module, x: Tensor, spec: NoiseSpec, k: int = 1) -> float:
    jac = torch.autograd.functional.jacobian(lambda z: conv(z.unsqueeze(0))[0], x)  # [4, 3, 3, 3, 8, 8]
    per_out = jac.flatten(3).pow(2).sum(-1)  # [4, 3, 3]: squared norm of each output's row of J
    weight = torch.where(spec.keep, k / spec.sigma.pow(2), torch.zeros(()))
    return float((per_out * weight).sum()) / x.numel()


def test_fisher_matches_the_exact_trace_of_a_linear_head() -> None:
    conv, x, spec = _linear_case()
    fb = fisher_bound(conv, lambda z: z, x, spec, projections=600, progress=False)
    exact = [_exact_dfil(conv, img, spec) for img in x]
    assert fb["values"] == 3 * 8 * 8 and fb["projections"] == 600
    for est, err, want in zip(fb["dfil"], fb["dfil_stderr"], exact, strict=True):
        assert abs(est - want) < 4 * err and abs(est - want) < 0.08 * want
    assert fb["mse_bound"][0] == pytest.approx(1 / fb["dfil"][0])
    assert fb["psnr_bound"][0] == pytest.approx(10 * math.log10(fb["dfil"][0]))
    k4 = fisher_bound(conv, lambda z: z, x, spec, k=4, projections=600, progress=False)
    assert k4["mean_dfil"] == pytest.approx(4 * fb["mean_dfil"], rel=1e-6)  # same projections


def test_fisher_falls_with_noise_and_vanishes_when_all_is_suppressed() -> None:
    conv, x, spec = _linear_case()
    base = fisher_bound(conv, lambda z: z, x, spec, projections=50, progress=False)["mean_dfil"]
    loud = fisher_bound(conv, lambda z: z, x, _linear_case(3.0)[2], projections=50, progress=False)
    assert loud["mean_dfil"] == pytest.approx(base / 9, rel=1e-5)
    half = torch.tensor([True, False, True, False]).view(4, 1, 1)
    part = fisher_bound(conv, lambda z: z, x, _linear_case(keep=half)[2], projections=600, progress=False)
    want = sum(_exact_dfil(conv, img, _linear_case(keep=half)[2]) for img in x) / 2
    assert 0 < part["mean_dfil"] < base and part["mean_dfil"] == pytest.approx(want, rel=0.1)
    none = fisher_bound(
        conv, lambda z: z, x, _linear_case(keep=half & False)[2], projections=4, progress=False
    )
    assert none["mean_dfil"] == 0.0 and none["mse_bound"] == [math.inf, math.inf]
    with pytest.raises(InputError, match="projections >= 2"):
        fisher_bound(conv, lambda z: z, x, spec, projections=1)


# -- the attacks on a real head ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces(shared_dir: Path) -> dict[str, Any]:
    """MobileNetV3-Small (shipped mask-compliance weights) cut at features.0, LFW face crops, a decoder."""
    from veil.mask_compliance.data import centre_crop
    from veil.models import build_model
    from veil.split.graph import cut

    torch.set_num_threads(1)
    lfw = shared_dir / "data/lfw"
    crop = [centre_crop(load_image(p), 0.55, 64) for p in list_images(lfw / "attack")[:52]]
    test = [centre_crop(load_image(p), 0.55, 64) for p in list_images(lfw / "test")[:4]]
    spec = {"shape": [3, 64, 64], "dtype": "float32", "normalisation": IMAGENET}
    model = build_model("mask-compliance")
    head = cut(model, "features.0", prepare(test[:2], spec, (64, 64)))[0].eval()
    aux = activations(head, crop, spec, (64, 64), progress=False)
    cfg = AttackConfig(output_size=64, width=32, steps=80, val_images=0, eval_every=80, lr=3e-3)
    paths = [Path(f"p{i}.png") for i in range(48)]
    decoder = train_attacker(aux[:48], torch.stack(crop[:48]), paths, None, cfg, progress=False)
    return {
        "head": head,
        "to_input": input_map(spec, (64, 64)),
        "acts": activations(head, test, spec, (64, 64), progress=False),
        "targets": torch.stack(test),
        "calibration": (aux[48:], torch.stack(crop[48:])),
        "prior": to_unit(torch.stack(crop[:48])).mean(0),
        "decoder": decoder,
    }


FAST: dict[str, Any] = {
    "steps": 80,
    "hybrid_steps": 80,
    "lr": 0.08,
    "hybrid_lr": 0.08,
    "param_size": 64,
    "images": 4,
}


def test_rmle_inverts_a_clean_early_split_and_fails_under_heavy_noise(faces: dict[str, Any]) -> None:
    cfg = InversionConfig(**{k: v for k, v in FAST.items() if "hybrid" not in k})
    ref = to_unit(faces["targets"])
    floor = float(ssim(faces["prior"].expand_as(ref), ref).mean())
    clean = invert(faces["head"], faces["to_input"], faces["acts"], None, 1, faces["prior"], cfg, False)
    assert clean.shape == ref.shape and float(clean.min()) >= 0 and float(clean.max()) <= 1
    s_clean = float(ssim(clean, ref).mean())
    assert s_clean > floor + 0.3, (s_clean, floor)
    std = faces["acts"].transpose(0, 1).flatten(1).std(1).view(-1, 1, 1)
    heavy = NoiseSpec(torch.zeros_like(std), 4 * std, torch.ones_like(std, dtype=torch.bool))
    released = heavy.draw(faces["acts"], torch.Generator().manual_seed(0))
    noisy = invert(faces["head"], faces["to_input"], released, heavy, 1, faces["prior"], cfg, False)
    assert float(ssim(noisy, ref).mean()) < s_clean - 0.2


def test_whitebox_measure_hybrid_is_at_least_the_better_attack(faces: dict[str, Any]) -> None:
    cfg = WhiteboxConfig(**FAST, calibration_images=2, anchor_grid=(0.0, 10.0, math.inf))
    decoders: dict[int, Attacker] = {1: faces["decoder"]}
    res = whitebox_measure(
        faces["head"], faces["to_input"], faces["acts"], faces["targets"], None, decoders,
        faces["prior"], cfg, ks=(1, 16), progress=False, calibration=faces["calibration"],
    )  # fmt: skip
    m = res.metrics
    best = max(m["decoder"]["ssim"]["1"], m["rmle"]["ssim"]["1"])
    assert m["hybrid"]["ssim"]["1"] >= best - 0.02, m
    assert m["rmle"]["ssim"]["1"] > m["floor"]["ssim"] + 0.3
    assert m["hybrid"]["ssim"]["16"] == m["hybrid"]["ssim"]["1"]  # clean: nothing to average
    assert set(m["hybrid"]["calibration"]["1"]) == {"inf", "10", "0"}
    assert m["fisher"] is None and m["images"] == 4
    assert m["budget"]["steps"] == 80 and m["budget"]["anchor_grid"] == (0.0, 10.0, math.inf)
    assert res.recons["hybrid"][1].dtype == torch.uint8 and res.recons["rmle"][1].shape == (4, 3, 64, 64)


def test_whitebox_measure_on_noise_reports_the_bound_per_k(faces: dict[str, Any]) -> None:
    std = faces["acts"].transpose(0, 1).flatten(1).std(1).view(-1, 1, 1)
    spec = NoiseSpec(torch.zeros_like(std), std, torch.ones_like(std, dtype=torch.bool))
    cfg = WhiteboxConfig(**{**FAST, "steps": 20, "images": 2}, attacks=("rmle", "fisher"), projections=4)
    res = whitebox_measure(
        faces["head"], faces["to_input"], faces["acts"], faces["targets"], spec, None, faces["prior"], cfg,
        ks=(1, 16), progress=False,
    )  # fmt: skip
    fisher = res.metrics["fisher"]
    assert fisher["dfil"]["16"] == pytest.approx(16 * fisher["dfil"]["1"])
    assert fisher["mse_bound"]["1"] > fisher["mse_bound"]["16"] > 0
    assert set(res.metrics) >= {"rmle", "fisher", "floor"} and "hybrid" not in res.metrics
    assert res.metrics["rmle"]["ssim"]["16"] != res.metrics["rmle"]["ssim"]["1"]


def test_bad_budgets_are_refused_in_one_line() -> None:
    for cfg, match in [
        (InversionConfig(steps=0), "steps=0"),
        (InversionConfig(lr=-1.0), "lr=-1.0"),
        (InversionConfig(param_size=8), "param_size=8"),
        (WhiteboxConfig(attacks=("rmle", "gan")), "choose one or more of rmle, hybrid, fisher"),
        (WhiteboxConfig(projections=1), "projections=1"),
    ]:
        with pytest.raises(InputError, match=match) as err:
            cfg.check()
        assert "\n" not in str(err.value)
    acts, targets = torch.zeros(2, 4, 8, 8), torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(InputError, match="starts from the trained decoder"):
        whitebox_measure(nn.Identity(), lambda z: z, acts, targets, None, None, torch.zeros(3, 32, 32))
