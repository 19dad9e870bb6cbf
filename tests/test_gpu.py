"""The CUDA path: same detections as on CPU, fresh device-side noise, and a shipped transform's accuracy.

Skipped where no GPU is visible (CI never has one); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from veil.faceboxes.data import load_dataset
from veil.faceboxes.detect import build_detector
from veil.faceboxes.eval.runner import evaluate_draws
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.shipped import shipped_transforms
from veil.imageio import load_image, preprocess
from veil.noise import NoiseTransform

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _matched(a: torch.Tensor, b: torch.Tensor, min_score: float) -> None:
    """Every confident box of ``a`` has a twin in ``b`` (IoU > 0.9, score within 0.02)."""
    keep = a[a[:, 4] > min_score]
    if len(keep) == 0:
        return
    assert len(b) > 0, "the other device found nothing"
    iou = box_iou(keep[:, :4], b[:, :4])
    best, idx = iou.max(dim=1)
    assert bool((best > 0.9).all()), best
    assert float((keep[:, 4] - b[idx, 4]).abs().max()) < 0.02


def test_cuda_detections_match_cpu(weights: Path, fddb_sample: Path) -> None:
    images = [load_image(p) for p in sorted(fddb_sample.rglob("*.jpg"))]
    assert len(images) >= 5
    cpu, gpu = build_detector(weights), build_detector(weights, device="cuda")
    confident = 0
    for img in images:
        on_cpu, on_gpu = cpu.detect([img])[0], gpu.detect([img])[0].cpu()
        _matched(on_cpu, on_gpu, 0.6)
        _matched(on_gpu, on_cpu, 0.6)
        confident += int((on_cpu[:, 4] > 0.6).sum())
    assert confident >= len(images)  # the comparison covered real faces, not empty lists


def test_cuda_noise_is_fresh_seeded_and_calibrated() -> None:
    noise = NoiseTransform((128, 32, 32), smax=4.0, granularity="channel").cuda()
    with torch.no_grad():
        noise.rho.copy_(torch.linspace(-2.0, 2.0, 128).view(128, 1, 1))
        noise.mu.copy_(torch.linspace(-1.0, 1.0, 128).view(128, 1, 1))
    noise.suppress_above(3.9)  # the noisiest channels become the constant mu
    x = torch.randn(64, 128, 32, 32, device="cuda")
    with torch.inference_mode():
        a, b = noise(x), noise(x)
    assert a.is_cuda and not torch.equal(a, b)  # a 63-bit seed from OS entropy per call, drawn on the device
    dropped = ~noise.keep.view(128)
    assert 0 < int(dropped.sum()) < 128
    mu = noise.mu.detach().view(128)
    assert torch.equal(a[:, dropped], mu[dropped].view(1, -1, 1, 1).expand_as(a[:, dropped]))
    sigma = noise.sigma().detach().view(128)[~dropped]
    diff = (a - x - mu.view(1, -1, 1, 1))[:, ~dropped].transpose(0, 1).reshape(int((~dropped).sum()), -1)
    assert torch.allclose(diff.std(dim=1), sigma, rtol=0.02)  # 65,536 draws per channel
    assert float(diff.mean(dim=1).abs().max()) < 0.05 * float(sigma.max())

    seeded = [NoiseTransform((128, 32, 32), smax=4.0, seed=7).cuda() for _ in range(2)]
    with torch.inference_mode():
        assert torch.equal(seeded[0](x[:2]), seeded[1](x[:2]))


@pytest.mark.slow
def test_cuda_shipped_default_keeps_ap_and_matches_cpu(weights: Path, mask_scenes: Path) -> None:
    data = load_dataset(mask_scenes).part("test")
    ap = {}
    for device in ("cpu", "cuda"):
        det = load_pipeline(weights, device=device)
        ap[device] = evaluate_draws(data, det.detect, draws=1, progress=False)[0].mean.pooled_ap
    assert abs(ap["cuda"] - ap["cpu"]) < 0.005, ap
    smallest = min(shipped_transforms())
    noisy = load_pipeline(weights, shipped_transforms()[smallest], device="cuda")
    summary, _ = evaluate_draws(data, noisy.detect, draws=6, progress=False)
    assert summary.mean.pooled_ap >= ap["cuda"] - 0.03, (ap, summary.pooled.tolist())


def test_cuda_preprocess_matches_cpu(fddb_sample: Path) -> None:
    images = [load_image(p) for p in sorted(fddb_sample.rglob("*.jpg"))[:3]]
    on_cpu = preprocess(images, size=(1024, 1024))
    on_gpu = preprocess(images, size=(1024, 1024), device="cuda")
    assert on_gpu.tensor.is_cuda and on_gpu.resized_sizes == on_cpu.resized_sizes
    assert float((on_gpu.tensor.cpu() - on_cpu.tensor).abs().max()) <= 1.0  # one grey level at most


@pytest.mark.slow
def test_cuda_audit_trains_real_attackers(
    shared_dir: Path, faceboxes: torch.nn.Module, tmp_path: Path
) -> None:
    """The audit's attackers and verifier on the GPU: same conclusions as the CPU tests, CPU outputs."""
    from test_audit import OUT, SIZE, TINY, _channel_noise
    from veil.audit import adapt_attacker, load_attacker, reconstruct, save_attacker, ssim, train_attacker
    from veil.audit.attack import ImageSet, head_activations, score
    from veil.audit.linkage import LinkageConfig, linkage_auc, train_verifier
    from veil.faceboxes.registry import split_model
    from veil.imageio import list_images

    lfw = shared_dir / "data" / "lfw"
    aux = ImageSet.load(list_images(lfw / "attack")[: TINY.max_images], OUT, "aux")
    test = ImageSet.load(list_images(lfw / "test")[:96], OUT, "test")
    head = copy.deepcopy(split_model(faceboxes, "rdcl")[0])  # the shared model stays on the CPU
    aux_acts = head_activations(head, aux.images, SIZE, progress=False, device="cuda")
    test_acts = head_activations(head, test.images, SIZE, progress=False, device="cuda")
    on_cpu = head_activations(head.cpu(), aux.images[:8], SIZE, progress=False)
    assert not aux_acts.is_cuda
    assert float((aux_acts[:8] - on_cpu).norm() / on_cpu.norm()) < 1e-2
    cfg = replace(TINY, device="cuda")
    std, shape = float(aux_acts.std()), tuple(aux_acts.shape[1:])
    high_spec = _channel_noise(8 * std, shape)
    clean = train_attacker(aux_acts, aux.targets, aux.paths, None, cfg, progress=False)
    high = train_attacker(aux_acts, aux.targets, aux.paths, high_spec, cfg, progress=False)
    assert next(clean.decoder.parameters()).is_cuda
    mean = aux.targets.float().mean(0, keepdim=True).expand_as(test.targets) / 255
    floor = float(ssim(mean, test.targets.float() / 255).mean())
    s_clean = float(score(clean, test_acts, test.targets)[0].mean())
    s_high = float(score(high, test_acts, test.targets)[0].mean())
    assert s_clean > floor + 0.15 and s_high < s_clean - 0.15, (floor, s_clean, s_high)
    adapted = adapt_attacker(high, 16, aux_acts, aux.targets, aux.paths, cfg, progress=False)
    assert float(score(adapted, test_acts, test.targets, k=16)[0].mean()) > s_high
    loaded = load_attacker(save_attacker(clean, tmp_path / "clean.safetensors"))  # stored from the GPU
    on_gpu = reconstruct(test_acts[:4], clean)
    assert (reconstruct(test_acts[:4], loaded).int() - on_gpu.int()).abs().max() <= 1  # TF32 vs fp32

    link = LinkageConfig(steps=150, device="cuda")
    auc = {}
    for name, spec in (("clean", None), ("high", high_spec)):
        verifier = train_verifier(aux_acts, aux.paths, spec, link, progress=False)
        found = linkage_auc(verifier, test_acts, test.paths, spec)
        assert found is not None
        auc[name] = found["auc"]
    assert auc["clean"] > auc["high"] + 0.05 and auc["clean"] > 0.6, auc


@pytest.mark.slow
def test_cuda_training_and_tail_tuning(weights: Path, shared_dir: Path, tmp_path: Path) -> None:
    """``veil train / tune-tail --device cuda``: head block, noise, tail, adapter and online attacker train
    on the GPU; the artifact is stored from CPU tensors, loads anywhere, and tuning keeps the release."""
    from conftest import TINY_TRAIN
    from veil.artifact import load_transform, release_digest
    from veil.cli.tune_cmd import tune_config
    from veil.faceboxes.registry import create_model, split_model
    from veil.models.adapter import adapter_shape
    from veil.training import TrainConfig, train

    photos = [str(shared_dir / "data/lfw/attack")]  # the folder a GPU machine's copy of ../shared carries
    cfg = TrainConfig(
        weights=str(weights),
        images=photos,
        alpha=0.5,
        granularity="channel",
        privacy="adversarial",
        adversary_photos=16,
        train_head=True,
        tail_adapter=2,
        device="cuda",
        **(TINY_TRAIN | {"steps": 20}),
    )
    metrics = train(cfg, tmp_path / "t", progress=False)
    tr = load_transform(tmp_path / "t", weights)
    assert tr.meta["train"]["device"] == "cuda" and metrics["mean_sigma"] > 0
    assert tr.head_state is not None and tr.tail_state is not None
    base = split_model(create_model("faceboxes", weights), "inception3")[0].state_dict()
    moved = [k for k, v in tr.head_state.items() if not torch.equal(v, base[k])]
    assert moved, "the head block did not train"
    assert adapter_shape(tr.tail_state) == (128, 2, 64)  # built on the CPU, trained on the GPU

    tuned_cfg = tune_config(tmp_path / "t", weights, steps=10, samples=8, device="cuda", images=photos)
    train(tuned_cfg, tmp_path / "u", progress=False)
    tuned = load_transform(tmp_path / "u", weights)
    assert release_digest(tuned) == release_digest(tr)  # the client's tensor is unchanged
    assert tuned.tail_state is not None
    assert any(not torch.equal(tuned.tail_state[k], v) for k, v in tr.tail_state.items())
    det = load_pipeline(weights, tmp_path / "u")  # trained on the GPU, served from the CPU
    image = load_image(sorted(shared_dir.glob("data/fddb-sample/**/*.jpg"))[0])
    boxes = det.detect([image])[0]
    assert boxes.shape[-1] == 5 and bool(torch.isfinite(boxes).all())
