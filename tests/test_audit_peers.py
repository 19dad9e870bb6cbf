"""Peer defences (veil.audit.peers) on the real mask-compliance classifier, its real crops and LFW faces.

Each family builds a ``Protected`` whose release has the wire's shape; more of its knob costs task score
and (for the input-side and noise families, at ``features.3`` where the clean release leaks) decoder
SSIM; NoPeek's dCor falls with lambda; DISCO prunes the asked share; the frontier's PNG names the
families; the dominance verdict is checked on a synthetic table. Real-data tests skip without ../shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from veil.audit.attack import AttackConfig, ImageSet, NoiseSpec, resize_uint8, score, train_attacker
from veil.audit.peers import (
    FAMILIES,
    PeerConfig,
    build_peers,
    check_families,
    plot_frontier,
    run_peers,
    verdicts,
)
from veil.audit.peers.baselines import dcor_loss
from veil.audit.peers.filters import InputBlur, InputDownscale
from veil.audit.peers.run import head_acts
from veil.errors import InputError

CFG = PeerConfig(steps=8, tail_steps=4, progress=False)


def _row(family: str, level: float, kept: float, ssim: float) -> dict[str, Any]:
    return {"family": family, "level": level, "accuracy_retained": kept, "strongest": ssim}


# -- no data needed -----------------------------------------------------------------------------------
def test_verdicts_on_a_synthetic_table() -> None:
    rows = [
        _row("veil", 0.2, 0.98, 0.42),
        _row("veil", 0.4, 0.95, 0.41),
        _row("gaussian", 1.0, 0.97, 0.45),  # veil 0.2 keeps more and leaks less
        _row("blur", 2.0, 0.99, 0.43),  # keeps more than any veil point
        _row("nopeek", 1.0, 0.90, 0.40),  # veil keeps more but leaks more
        _row("clean", 0.0, 1.0, 0.6),  # not a peer: no sentence
    ]
    out = verdicts(rows)
    assert len(out) == 3
    assert out[0].startswith("gaussian 1 (retained 97.0%, SSIM 0.450): dominated by veil α 0.2")
    assert "veil α 0.4" not in out[0]  # 95 % < 97 %: not a match
    assert "NOT dominated" in out[1] and "no veil transform keeps 99.0%" in out[1]
    assert "NOT dominated" in out[2] and "veil α 0.4 keeps as much accuracy but leaks more" in out[2]
    # below the mean-image floor an attacker has shown no leak: SSIMs there count as the floor
    floored = [
        {**_row("veil", 0.2, 0.99, 0.39), "floor": 0.40},
        {**_row("blur", 1.0, 0.98, 0.37), "floor": 0.40},
    ]
    assert verdicts(floored) == [
        "blur 1 (retained 98.0%, SSIM 0.370): dominated by veil α 0.2 (as much accuracy or more, as little "
        "SSIM or less) (both at the mean-image floor)."
    ]
    above = verdicts([{**floored[0], "strongest": 0.45}, floored[1]])[0]
    assert above.endswith("NOT dominated: veil α 0.2 keeps as much accuracy but leaks more (SSIM 0.450).")
    assert verdicts([_row("gaussian", 1.0, 0.9, 0.5)]) == [
        "gaussian 1 (retained 90.0%, SSIM 0.500): no veil transform to compare with."
    ]


def test_frontier_png_names_every_family(tmp_path: Path) -> None:
    rows = [
        _row(f, lv, 1.0 - 0.1 * lv, 0.5 - 0.02 * lv) for f in ("gaussian", "blur", "disco") for lv in (1, 2)
    ]
    rows += [_row("veil", 0.2, 0.98, 0.41), _row("clean", 0.0, 1.0, 0.55)]
    png = plot_frontier(rows, 0.406, tmp_path / "f.png", "title")
    with Image.open(png) as im:
        assert im.size[0] > 400
        legend = im.info["Description"]
    for name in ("gaussian", "blur", "disco", "veil (shipped transforms)", "clean split", "floor 0.406"):
        assert name in legend


def test_bad_families_and_levels_refused_in_one_line() -> None:
    with pytest.raises(
        InputError, match=r"unknown peer family 'dropout': choose from gaussian, shredder"
    ) as e:
        check_families(["gaussian", "dropout"])
    assert "\n" not in str(e.value)
    for fam, level, rule in [("disco", 1.5, "share in"), ("downscale", 0.5, ">= 1"), ("blur", -1, ">= 0")]:
        with pytest.raises(InputError, match=f"peer {fam}: level .* out of range .*{rule}"):
            check_families([fam], {fam: [level]})
    with pytest.raises(InputError, match="levels given for unknown peer family 'nope'"):
        check_families(["blur"], {"nope": [1.0]})
    assert set(FAMILIES) == {"gaussian", "shredder", "nopeek", "disco", "blur", "downscale"}


def test_blur_and_downscale_change_the_input_as_expected() -> None:
    flat = torch.full((1, 3, 32, 32), 0.7)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(1, 3, 32, 32)
    for f in (InputBlur(2.0), InputDownscale(4.0)):
        assert torch.allclose(f(flat), flat, atol=1e-5)  # a constant image stays constant
        out = f(checker)
        assert out.shape == checker.shape
        assert float(out.std()) < 0.1 * float(checker.std())  # the finest pattern is gone
        assert abs(float(out.mean()) - 0.5) < 0.02  # the mean is kept
    assert torch.equal(InputBlur(0.0)(checker), checker) and torch.equal(
        InputDownscale(1.0)(checker), checker
    )
    # a wider blur removes more of a coarser pattern
    bars = (torch.arange(32) // 4 % 2).float().view(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert float(InputBlur(4.0)(bars).std()) < float(InputBlur(1.0)(bars).std()) < float(bars.std())


def test_dcor_loss_tells_dependence_from_independence() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    assert float(dcor_loss(x, 3 * x + 1)) == pytest.approx(1.0, abs=1e-4)
    independent = float(dcor_loss(x, torch.randn(200, 3, generator=g)))
    assert independent < 0.35
    assert float(dcor_loss(x, x.pow(2))) > independent + 0.1  # a dependence no correlation sees


# -- the real classifier, crops and faces ----------------------------------------------------------------
@pytest.fixture(scope="module")
def task(mask_scenes: Path) -> Any:
    torch.set_num_threads(1)
    from veil.mask_compliance.peers import peers

    return peers(mask_scenes, max_train=64, max_test=240, batch=16, draws=1)


@pytest.fixture(scope="module")
def model() -> Any:
    from veil.models.public import build_model

    return build_model("mask-compliance")


@pytest.fixture(scope="module")
def faces(shared_dir: Path) -> tuple[ImageSet, ImageSet]:
    from veil.imageio import list_images, load_image
    from veil.mask_compliance.data import centre_crop

    lfw = shared_dir / "data" / "lfw"
    if not lfw.is_dir():
        pytest.skip("../shared/data/lfw not found")

    def load(part: str, n: int) -> ImageSet:
        paths = list_images(lfw / part)[:n]
        images = [centre_crop(load_image(p), 0.55) for p in paths]
        return ImageSet(part, paths, images, torch.stack([resize_uint8(i, 32) for i in images]))

    return load("attack", 128), load("test", 48)


def test_each_family_releases_the_wire_shape(model: Any, task: Any) -> None:
    x = task.batches[0][:5]
    for fam in FAMILIES:
        ((level, p),) = build_peers(
            model, "features.11", fam, [0.5 if fam != "downscale" else 2.0], task, CFG
        )
        r = p.release(x)
        assert r.shape == (5, 96, 2, 2), fam
        assert p.meta["peer"]["family"] == fam and p.meta["peer"]["level"] == level
        assert p(x).shape == (5, 3)
        deterministic = fam not in ("gaussian", "shredder")
        assert torch.equal(p.release(x), r) == deterministic, fam


def test_more_of_each_knob_costs_task_score(model: Any, task: Any) -> None:
    clean = task.score(model)
    for fam, (low, high) in {"gaussian": (0.1, 6.0), "blur": (0.5, 16.0), "downscale": (1.0, 16.0)}.items():
        (_, weak), (_, strong) = build_peers(model, "features.11", fam, [low, high], task, CFG)
        assert task.score(weak) > task.score(strong) + 0.05, fam
        assert task.score(weak) > 0.8 * clean, fam


def test_nopeek_dcor_falls_with_lambda(model: Any, task: Any) -> None:
    cfg = PeerConfig(steps=10, progress=False, lr_head=1e-3)
    (_, none), (_, strong) = build_peers(model, "features.11", "nopeek", [0.0, 30.0], task, cfg)
    assert strong.meta["peer"]["dcor_last"] < none.meta["peer"]["dcor_last"] - 0.05
    assert none.head_trained and strong.head_trained


def test_disco_prunes_the_asked_share(model: Any, task: Any) -> None:
    peers = build_peers(model, "features.11", "disco", [0.25, 0.75], task, CFG)
    for share, p in peers:
        kept = p.noise.keep.flatten()
        assert int((~kept).sum()) == round(share * 96) == p.meta["peer"]["pruned"]
        x = task.batches[0][:4]
        r, a = p.release(x), p.head(x)
        pruned = ~kept
        assert torch.equal(r[:, kept], a[:, kept])  # kept channels pass unchanged
        assert torch.allclose(
            r[:, pruned], p.noise.mu.flatten()[pruned].view(1, -1, 1, 1).expand(4, -1, 2, 2)
        )
    strong = set(torch.nonzero(~peers[1][1].noise.keep.flatten()).flatten().tolist())
    weak = set(torch.nonzero(~peers[0][1].noise.keep.flatten()).flatten().tolist())
    assert weak <= strong  # one ranking: a larger share prunes a superset


def test_more_of_the_knob_lowers_the_decoders_ssim(model: Any, task: Any, faces: Any) -> None:
    aux, ev = faces
    cfg = AttackConfig(output_size=32, width=16, steps=80, val_images=0, eval_every=1000, seed=0)
    for fam, (low, high) in {"gaussian": (0.0, 4.0), "downscale": (1.0, 16.0)}.items():
        ssims = []
        for _, p in build_peers(
            model, "features.3", fam, [low, high], task, PeerConfig(tail_steps=0, progress=False)
        ):
            a, e = (head_acts(p.head, s.images, task.to_input, 64) for s in (aux, ev))
            spec = NoiseSpec.of(p.noise, a.shape[1:])
            attacker = train_attacker(a, aux.targets, aux.paths, spec, cfg, progress=False)
            ssims.append(float(score(attacker, e, ev.targets)[0].mean()))
        assert ssims[1] < ssims[0] - 0.02, (fam, ssims)


def test_run_peers_rows_and_refusals(model: Any, task: Any, faces: Any, tmp_path: Path) -> None:
    aux, ev = faces
    cfg = AttackConfig(
        output_size=32, width=8, steps=20, adapt_steps=5, ks=(1, 16), val_images=0, eval_every=1000
    )
    from veil.mask_compliance.shipped import shipped_default

    calls: list[str] = []

    def extra(target: Any) -> dict[str, dict[str, float]]:
        calls.append(target.name)
        assert target.aux_acts.shape[1:] == (96, 2, 2) and target.decoder is not None
        return {"hybrid": {"1": 0.1, "16": 0.9 if target.noisy else 0.1}}

    fams, levels = ["gaussian", "blur"], {"gaussian": [1.0], "blur": [2.0]}
    res = run_peers(model, "features.11", task, aux, ev, cfg, fams, levels, [str(shipped_default())], CFG,
                    extra_attack=extra, out=tmp_path, progress=False)  # fmt: skip
    fams = [r["family"] for r in res["rows"]]
    assert fams == ["clean", "gaussian", "blur", "veil"] and calls == [
        "clean",
        "gaussian 1",
        "blur 2",
        "veil 0.2",
    ]
    by = {r["family"]: r for r in res["rows"]}
    assert by["blur"]["ssim"]["decoder"]["16"] == by["blur"]["ssim"]["decoder"]["1"]  # deterministic: K moot
    assert by["gaussian"]["noisy"] and not by["blur"]["noisy"]
    assert by["gaussian"]["strongest"] == 0.9  # the strongest attack is the one plotted
    assert by["clean"]["accuracy_retained"] == 1.0 and 0.8 < by["veil"]["accuracy_retained"] <= 1.05
    assert len(res["verdicts"]) == 2 and Path(res["png"]).is_file() and (tmp_path / "peers.json").is_file()
    with pytest.raises(InputError, match="unknown peer family 'fog'"):
        run_peers(model, "features.11", task, aux, ev, cfg, ["fog"])
