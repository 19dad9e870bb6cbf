"""``--model NAME|package.module:factory`` (+ ``--weights``) on the CLI commands (issue 33).

A small conv net in a module on PYTHONPATH is trained by the real ``veil train --model mod:net`` on the
FDDB sample images that ship with veil; the face-detection commands refuse it in one line naming the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import veil
from veil.assets import default_weights, sample_dataset

ZOO = '''
import torch
from torch import nn


def net(weights=None):
    """A small conv net (test zoo)."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    if weights is not None:
        m.load_state_dict(torch.load(weights, weights_only=True))
    return m


def random_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())


def not_a_module():
    return 3


def faceboxes_variant(weights=None):
    """FaceBoxes with the shipped checkpoint, registered as a variant."""
    from veil.models.public import build_model
    return build_model("faceboxes", weights)


faceboxes_variant.veil_task = "faceboxes"
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    (root / "veil_cli_zoo.py").write_text(ZOO)
    info = root / "veil_cli_zoo-1.0.dist-info"  # an installed distribution, as pip leaves it
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: veil_cli_zoo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[veil.models]\nzoo-net = veil_cli_zoo:net\nzoo-faces = veil_cli_zoo:faceboxes_variant\n"
    )
    return root


def veil_cli(zoo: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The ``veil`` command with the zoo on PYTHONPATH (its own process, errors as the CLI prints them)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(zoo), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", "from veil.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def here(zoo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """The ``veil`` command in this process (no interpreter start-up: fast), the zoo on sys.path."""
    from veil.cli.main import main

    monkeypatch.syspath_prepend(str(zoo))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["veil", *args])
        with pytest.raises(SystemExit) as done:
            main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["veil", *args], int(done.value.code or 0), out, err)

    return run


def one_line(proc: subprocess.CompletedProcess[str], *says: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


def images() -> Path:
    return sample_dataset() / "originalPics"


@pytest.fixture(scope="module")
def trained(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("t") / "net"
    args = ["train", "--model", "veil_cli_zoo:net", "--split", "1", "--data", str(images())]
    args += ["--size", "48x64", "--alpha", "0.2", "--steps", "2", "--batch-size", "4", "--quiet"]
    proc = veil_cli(zoo, *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_train_any_model_writes_a_transform_that_loads(zoo: Path, trained: tuple[Path, str]) -> None:
    out, stdout = trained
    sys.path.insert(0, str(zoo))
    try:
        import veil_cli_zoo  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(zoo))
    model = veil_cli_zoo.net()
    q = veil.load(out, model)
    meta = json.loads((out / "transform.json").read_text())
    printed = [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("release_sha256 ")]
    assert printed == [meta["release_sha256"]] and len(printed[0]) == 64
    assert f"wrote {out}: veil_cli_zoo:net split 1, alpha 0.2" in stdout
    assert meta["kind"] == "generic" and meta["split"] == "1" and meta["alpha"] == 0.2
    assert meta["input_spec"]["shape"] == [3, 48, 64]  # the images, resized to --size 48x64
    assert meta["input_spec"]["normalisation"]["resize"] == [48, 64]
    assert meta["fit"]["steps"] == 2
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        assert q(x).shape == (2, 4)
        clean = q.head(x)
        assert q.release(x).shape == clean.shape == (2, 8, 48, 64)
        assert not torch.equal(q.release(x), clean)  # noise is added
    other = veil_cli_zoo.net()
    with torch.no_grad():
        other[0].weight.add_(0.1)
    with pytest.raises(veil.errors.TransformError, match="made for model"):
        veil.load(out, other)


def test_export_checks_the_named_model_against_the_transform(
    zoo: Path, here: Any, trained: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = trained
    ok = here("export", "triton", "--model", "veil_cli_zoo:net", "--transform", str(out),
                  "--out", str(tmp_path / "repo"))  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "sequential_noisy: libtorch tail" in ok.stdout and (tmp_path / "repo").is_dir()
    sys.path.insert(0, str(zoo))
    try:
        import veil_cli_zoo  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(zoo))
    shifted = {k: v + 0.5 for k, v in veil_cli_zoo.net().state_dict().items()}
    torch.save(shifted, tmp_path / "other.pt")
    export = ["export", "triton", "--model", "veil_cli_zoo:net", "--transform", str(out)]
    bad = here(*export, "--weights", str(tmp_path / "other.pt"), "--out", str(tmp_path / "r2"))
    one_line(bad, "is not the model", "give the --model and --weights it was protected from")
    assert not (tmp_path / "r2").exists()


def test_eval_of_a_model_without_an_evaluator_is_one_line(here: Any) -> None:
    one_line(
        here("eval", "--dataset", "d", "--model", "veil_cli_zoo:net"),
        "veil eval: veil_cli_zoo:net is a generic model and declares no evaluator",
        "register_model(..., evaluate=fn)",
    )


@pytest.mark.parametrize("command", [["detect", "x.jpg"], ["demo"], ["serve"]])
def test_face_commands_refuse_a_generic_model_in_one_line(here: Any, command: list[str]) -> None:
    line = one_line(here(*command, "--model", "veil_cli_zoo:net"), "veil_cli_zoo:net is a generic model")
    assert "veil train --model veil_cli_zoo:net" in line and "veil serve --transform" in line
    if command[0] != "serve":
        assert f"veil {command[0]} runs face detectors (task faceboxes)" in line


def test_bad_model_specs_are_one_line(here: Any, tmp_path: Path) -> None:
    one_line(here("detect", "x.jpg", "--model", "nope"), "unknown model 'nope'", "faceboxes", "zoo-net")
    one_line(
        here("detect", "x.jpg", "--model", "no_such_mod_xyz:net"),
        "cannot import 'no_such_mod_xyz'",
        "No module named",
    )
    train = [
        "train",
        "--alpha",
        "0.2",
        "--data",
        str(images()),
        "--size",
        "32",
        "--split",
        "1",
        "--steps",
        "1",
    ]
    out = str(tmp_path / "out")
    one_line(
        here(*train, "--model", "veil_cli_zoo:not_a_module", "--out", out),
        "returned a int, not a torch.nn.Module",
    )
    one_line(
        here(*train, "--model", "veil_cli_zoo:net", "--weights", str(tmp_path / "no.pt"), "--out", out),
        "weights file not found",
    )
    state = {k: v.clone() for k, v in torch.nn.Conv2d(3, 8, 3).state_dict().items()}
    state["weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    one_line(
        here(*train, "--model", "veil_cli_zoo:net", "--weights", str(tmp_path / "nan.pt"), "--out", out),
        "1 tensors hold NaN or infinite values (e.g. 'weight')",
    )
    one_line(here(*train, "--model", "veil_cli_zoo:net", "--out", out, "--images", "x"), "--images")
    assert not (tmp_path / "out").exists()


def test_models_lists_entry_points_with_their_task_and_a_faceboxes_variant_detects(
    here: Any, tmp_path: Path
) -> None:
    proc = here("models")
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split("\t")[0]: ln for ln in proc.stdout.splitlines()}
    assert "veil_cli_zoo:net\tA small conv net (test zoo).\ttask: generic" in lines["zoo-net"]
    assert lines["zoo-faces"].endswith("\ttask: faceboxes")
    assert lines["faceboxes"].endswith("\ttask: faceboxes")
    image = next(images().rglob("*.jpg"))
    runs = {}
    for model in ("faceboxes", "zoo-faces"):
        out = tmp_path / model
        proc = here("detect", str(image), "--model", model, "--weights", str(default_weights()),
                        "--size", "512", "--out", str(out))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs[model] = json.loads((out / f"{image.stem}.json").read_text())["boxes"]
    assert runs["zoo-faces"] == runs["faceboxes"] and len(runs["faceboxes"]) >= 1


def test_client_refuses_a_faceboxes_head_rebuilt_from_other_weights(tmp_path: Path) -> None:
    """The head the client rebuilds (base weights + transform) must have the recorded head_sha256."""
    from veil.artifact import load_transform
    from veil.client import VeilClient
    from veil.errors import ServingError
    from veil.faceboxes.shipped import shipped_transforms
    from veil.models.checkpoint import read_state_dict

    path = shipped_transforms()[0.5]
    tr = load_transform(path, default_weights())
    client = VeilClient("127.0.0.1:9", transform=tr, weights=default_weights())
    assert client.head is not None  # the recorded fingerprint holds for the real weights
    state = read_state_dict(default_weights())
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state[key] = state[key] * 1.01
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ServingError, match="not the recorded head_sha256") as err:
        VeilClient("127.0.0.1:9", transform=tr, weights=tmp_path / "other.pth")
    assert "\n" not in str(err.value)


def test_train_refuses_a_factory_with_random_weights(here: Any, tmp_path: Path) -> None:
    """A transform fits one model instance: a factory that draws new weights per call could never load it."""
    args = ["train", "--model", "veil_cli_zoo:random_net", "--alpha", "0.2", "--data", str(images())]
    proc = here(*args, "--size", "8", "--split", "1", "--out", str(tmp_path / "o"))
    one_line(proc, "builds different weights on every call", "pass --weights")
    assert not (tmp_path / "o").exists()
