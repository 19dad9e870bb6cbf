"""`veil demo`, the README's main job: Triton + client, clean vs obfuscated, table and pictures.

It runs on what the package ships (``veil.assets``): no ../shared needed, so nothing here skips without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import decode_png, read_file
from typer.testing import CliRunner

from veil import assets
from veil.artifact import load_transform, release_digest
from veil.cli.common import resolve_weights
from veil.cli.main import app
from veil.demo_picture import SUPPRESSED_GREY, Panels, channel_mosaic, render
from veil.errors import CheckpointError, VeilError
from veil.faceboxes.data import load_dataset
from veil.faceboxes.shipped import shipped_transforms
from veil.models.checkpoint import sha256_file

#: ../shared/weights/SHA256SUMS: the shipped checkpoint is that file, byte for byte.
FACEBOXES_SHA256 = "fa253d8765ed120cfffb0683785b851fdb53cda228c83bc4da7ab9ae8e124eaa"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A user's shell: no VEIL_* overrides, an empty working directory (no ../shared beside it)."""
    for var in ("VEIL_WEIGHTS", "VEIL_DATASET", "VEIL_SHARED"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "empty"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_shipped_weights_sample_and_attacker(no_env: Path) -> None:
    weights = assets.default_weights()
    assert sha256_file(weights) == FACEBOXES_SHA256
    assert resolve_weights(None) == weights  # every command's default, not only the demo's
    sample = load_dataset(assets.sample_dataset())
    assert len(sample.images) == 7 and sum(len(i.boxes) for i in sample.images) == 11
    default = load_transform(shipped_transforms()[0.12], weights)
    attacker = assets.attacker_for(release_digest(default))
    assert attacker is not None and attacker.name == "faceboxes-inception3-alpha0.12.safetensors"
    other = load_transform(shipped_transforms()[0.5], weights)
    assert assets.attacker_for(release_digest(other)) is None  # never shown on tensors it was not trained for
    size = sum(p.stat().st_size for p in assets.ASSETS_DIR.rglob("*") if p.is_file())
    # A few MB per task in the wheel: FaceBoxes (4.1 MB weights, 0.2 MB sample, 5.1 MB attacker), the
    # mask-compliance classifier (6.2 MB), the breast-cancer MLP (26 kB).
    assert size < 20_000_000


def test_damaged_asset_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "assets"
    shutil.copytree(assets.ASSETS_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    target = copy / assets.WEIGHTS
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setattr(assets, "ASSETS_DIR", copy)
    with pytest.raises(CheckpointError, match="reinstall veil") as err:
        assets.default_weights()
    assert "\n" not in str(err.value)
    (copy / assets.SAMPLE / "FDDB-folds" / "FDDB-fold-06.txt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        assets.sample_dataset()


def test_override_order(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given, env = no_env / "given.pth", no_env / "env.pth"
    given.touch()
    env.touch()
    assert assets.choose(None, "VEIL_WEIGHTS", assets.default_weights, "weights") == assets.default_weights()
    monkeypatch.setenv("VEIL_WEIGHTS", str(env))
    assert assets.choose(None, "VEIL_WEIGHTS", assets.default_weights, "weights") == env
    assert assets.choose(given, "VEIL_WEIGHTS", assets.default_weights, "weights") == given
    assert resolve_weights(None) == env
    monkeypatch.setenv("VEIL_DATASET", str(no_env / "nowhere"))
    with pytest.raises(VeilError, match=r"dataset not found at .*nowhere \(\$VEIL_DATASET\)"):
        assets.choose(None, "VEIL_DATASET", assets.sample_dataset, "dataset")


def _panels(keep: torch.Tensor, reconstruction: torch.Tensor | None) -> Panels:
    gen = torch.Generator().manual_seed(0)
    released = torch.randn(1, 128, 32, 32, generator=gen)
    released[0, ~keep[:, 0, 0]] = 0.25  # a suppressed channel carries its constant mu
    return Panels(
        image=torch.full((3, 60, 90), 128, dtype=torch.uint8),
        clean=torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.9]]),
        noisy=torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.8], [50.0, 5.0, 60.0, 15.0, 0.3]]),
        released=released,
        keep=keep,
        alpha=0.8,
        reconstruction=reconstruction,
    )


def test_picture_titles_and_suppressed_channels() -> None:
    keep = torch.ones(128, 1, 1, dtype=torch.bool)
    keep[::2] = False  # 64 of 128 suppressed, like a high alpha
    p = _panels(keep, torch.zeros(3, 128, 128, dtype=torch.uint8))
    titles = [ax.get_title() for ax in render(p).axes]
    assert titles[0].startswith("clean\n1 face")
    assert titles[1].startswith("α = 0.8: detections\n1 face")  # the 0.3 box is not counted
    assert titles[2].startswith("what left the machine") and "suppressed (64 of 128)" in titles[2]
    assert titles[3].startswith("what the shipped attacker")
    mosaic, tiles = channel_mosaic(p.released, keep)
    assert [ch for ch, _ in tiles] == torch.linspace(0, 127, 16).round().long().tolist()
    for i, (ch, dropped) in enumerate(tiles):
        assert dropped == (not bool(keep[ch]))
        r, c = divmod(i, 4)
        tile = mosaic[r * 33 : r * 33 + 32, c * 33 : c * 33 + 32]
        assert np.allclose(tile, SUPPRESSED_GREY) == dropped  # flat grey only where suppressed
    no_attacker = render(_panels(keep, None))
    assert no_attacker.axes[3].get_title().startswith("what an attacker")
    assert "veil audit" in no_attacker.axes[3].texts[0].get_text()


def test_demo_help_imports_no_torch() -> None:
    code = (
        "import sys, atexit; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
        "sys.argv = ['veil', 'demo', '--help']; from veil.cli.main import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--weights" in result.stdout and "torch loaded: False" in result.stdout


@pytest.mark.slow
def test_demo_prints_table_and_writes_pictures(no_env: Path) -> None:
    shipped = shipped_transforms()
    transform = shipped[min(shipped)]  # the default release: its attacker ships, so all four panels
    out = no_env / "demo"
    args = ["demo", "--transform", str(transform), "--out", str(out), "--draws", "1", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for step in ("Starting Triton", "Evaluating clean", "Evaluating α = 0.12", "Drawing α = 0.12"):
        assert any(line.startswith(step) for line in lines), step
    assert "assets/fddb-sample (7 images, 11 faces)" in result.output  # the shipped sample, no ../shared
    clean = next(line for line in lines if line.startswith("no "))
    noisy = next(line for line in lines if line.startswith("yes "))
    assert "0.9091" in clean  # the clean run through Triton equals local inference
    retained = float(noisy.split()[-1].rstrip("%"))
    assert retained >= 90.0
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 7  # one per FDDB sample image
    png = decode_png(read_file(str(pictures[0])))
    assert png.shape[0] in (3, 4) and png.shape[2] > 2 * png.shape[1]  # four panels side by side
    assert "inferences" in result.output  # Triton's own statistics were read back
