"""Issue 36 (4): K repeated queries with fresh noise vs sticky noise, on real faces and a real attack.

A small conv net (seeded) is protected after its first conv + ReLU for 32x32 inputs with its untrained
noise (sigma about the activation's std); the attacker's decoder is trained 50 steps on 48 LFW
attack-split faces and adapted to K = 64, then ``repeats_measure`` scores 24 LFW test faces. Needs
../shared (skipped without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import veil
from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec, adapt_attacker, train_attacker
from veil.audit.inputs import activations
from veil.audit.repeats import audit_key, image_seeds, repeats_measure, sticky_draw
from veil.errors import InputError
from veil.imageio import list_images

SIZE = 32
CFG = AttackConfig(
    output_size=32, width=16, steps=50, batch_size=8, adapt_steps=30, val_images=8, eval_every=25, seed=0
)


@pytest.fixture(scope="module")
def case(shared_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    lfw = shared_dir / "data" / "lfw"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1), nn.Flatten()
    )
    p = veil.protect(model, split="1", alpha=0.2, example=torch.rand(4, 3, SIZE, SIZE))
    spec_in = p.meta["input_spec"]
    aux = ImageSet.load(list_images(lfw / "attack")[:48], CFG.output_size, "aux")
    test = ImageSet.load(list_images(lfw / "test")[:24], CFG.output_size, "test")
    a = activations(p.head, aux.images, spec_in, (SIZE, SIZE), progress=False)
    e = activations(p.head, test.images, spec_in, (SIZE, SIZE), progress=False)
    spec = NoiseSpec.of(p.noise, a.shape[1:])
    base = train_attacker(a, aux.targets, aux.paths, spec, CFG, progress=False)
    adapted = adapt_attacker(base, 64, a, aux.targets, aux.paths, CFG, progress=False)
    attackers = {1: [base], 64: [adapted]}
    out = repeats_measure(attackers, e, test, spec, ks=(1, 4, 16, 64), seed=CFG.seed)
    return {"p": p, "spec": spec, "acts": e, "test": test, "attackers": attackers, "out": out}


def test_sticky_release_is_the_clients_and_the_same_for_every_k(case: dict[str, Any]) -> None:
    p, spec, acts, test = case["p"], case["spec"], case["acts"], case["test"]
    seeds = image_seeds(audit_key(0), test)
    assert len(set(seeds)) == len(test.paths)
    one = sticky_draw(spec, acts, seeds)
    assert torch.equal(one, sticky_draw(spec, acts, seeds, k=64))
    with torch.no_grad():
        client = p.noise.eval()(acts, seeds=seeds)  # what VeilClient / Protected.release send
    assert torch.allclose(one, client, atol=1e-6)
    with pytest.raises(InputError, match="one per sample"):
        sticky_draw(spec, acts, seeds[:-1])


def test_fresh_gains_with_k_sticky_stays_flat(case: dict[str, Any]) -> None:
    out = case["out"]
    assert out["ks"] == [1, 4, 16, 64] and out["images"] == 24
    fresh, sticky = out["fresh"]["ssim"], out["sticky"]["ssim"]
    assert len(set(sticky.values())) == 1  # one tensor, whatever K
    assert len(set(out["sticky"]["psnr"].values())) == 1
    assert fresh["64"] > fresh["1"] + 0.05, fresh  # averaging fresh releases helps the attacker
    assert fresh["16"] >= fresh["4"] - 0.01 and fresh["4"] >= fresh["1"] - 0.01
    assert abs(sticky["64"] - fresh["1"]) < 0.03  # one sticky release is one draw of the same law
    assert sticky["64"] < fresh["64"] - 0.04


def test_sticky_repeats_are_linkable_other_images_unrelated(case: dict[str, Any]) -> None:
    link, corr = case["out"]["linkage"], case["out"]["noise_corr"]
    assert link["sticky_auc"] == 1.0  # identical tensors
    assert 0.5 <= link["fresh_auc"] <= 1.0 and link["pairs"] == 24 * 23 and link["same_pairs"] == 24
    assert corr["elements"] == 16 * 16 * 16 and corr["pairs"] == 24 * 23
    assert (
        corr["mean_abs"] < 1.5 * corr["chance_mean_abs"] and corr["max_abs"] < 5 / 64
    )  # 5 sigma of r for independent noise


def test_bad_input_is_refused_in_one_line(case: dict[str, Any]) -> None:
    acts, test, spec, attackers = case["acts"], case["test"], case["spec"], case["attackers"]
    with pytest.raises(InputError, match=r"needs the K = 1 attacker"):
        repeats_measure({64: attackers[64]}, acts, test, spec)
    with pytest.raises(InputError, match="ks are repeat counts >= 1"):
        repeats_measure(attackers, acts, test, spec, ks=(0, 4))
    with pytest.raises(InputError, match="23 activations for 24 images"):
        repeats_measure(attackers, acts[:-1], test, spec)
    with pytest.raises(InputError, match="at least 32 bytes"):
        repeats_measure(attackers, acts, test, spec, key=b"k")


def test_a_clean_target_repeats_exactly(case: dict[str, Any]) -> None:
    acts, test, attackers = case["acts"], case["test"], case["attackers"]
    out = repeats_measure({1: attackers[1]}, acts, test, None, ks=(1, 4))
    assert out["fresh"]["ssim"]["1"] == out["fresh"]["ssim"]["4"] == out["sticky"]["ssim"]["4"]
    assert out["linkage"]["fresh_auc"] == out["linkage"]["sticky_auc"] == 1.0 and out["noise_corr"] is None


def test_fresh_rows_are_the_audits_own(case: dict[str, Any]) -> None:
    from dataclasses import replace

    from veil.audit.measure import measure

    cfg = replace(CFG, ks=(1, 4, 16, 64))
    audit = measure(case["attackers"], case["acts"], case["test"], case["spec"], cfg)
    assert audit["ssim"] == case["out"]["fresh"]["ssim"] and audit["psnr"] == case["out"]["fresh"]["psnr"]
