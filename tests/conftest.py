"""Shared fixtures: real data lives read-only in ../shared and tests skip cleanly when a clone lacks it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

# OpenMP threads that wait for work sleep instead of spinning (before torch loads libgomp; the veil
# processes the tests start inherit it). On a busy 2-core machine spinning threads steal the cores from
# each other: a tiny adversarial training run took 104 s at torch's default 2 threads, 16 s with this
# (15 s at 1 thread). A value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
from torch import nn

#: A training run small enough for CI (seconds on CPU); tests override what they study.
TINY_TRAIN: dict[str, int] = {"samples": 8, "steps": 40, "batch_size": 4, "input_size": 256, "log_every": 10}

#: ../shared beside the repository, or $VEIL_SHARED (as for the benchmarks), e.g. a copy on a GPU machine.
SHARED_DIR = Path(os.environ.get("VEIL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def tiny_adversarial(weights: Path, shared_dir: Path, granularity: str, **overrides: Any) -> Any:
    """A tiny ``--privacy adversarial`` TrainConfig on LFW photos (20 steps, 16 attacker photos)."""
    from veil.training import TrainConfig

    return TrainConfig(
        weights=str(weights),
        images=[str(shared_dir / "data/lfw/train")],
        alpha=0.5,
        privacy="adversarial",
        granularity=granularity,  # type: ignore[arg-type]
        adversary_photos=16,
        **(TINY_TRAIN | {"steps": 20} | overrides),
    )


def run_veil(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``veil`` command as a user runs it (its own process, errors as the CLI prints them)."""
    return subprocess.run(
        [sys.executable, "-c", "from veil.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_veil_each(*commands: Sequence[str], timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
    """:func:`run_veil` on each command, two at a time, results in the commands' order.

    Every ``veil`` process spends seconds importing torch on one core before it does anything, so
    independent commands (a run and the refusals beside it) overlap on a second core instead of queueing.
    """
    return _two_at_a_time([partial(run_veil, *args, timeout=timeout) for args in commands])


def run_script_each(
    name: str, *commands: Sequence[str], timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """:func:`run_script` of ``scripts/NAME.py`` on each argument list, two at a time, in their order."""
    return _two_at_a_time([partial(run_script, name, *args, timeout=timeout) for args in commands])


def _two_at_a_time(calls: list[Callable[[], subprocess.CompletedProcess[str]]]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda call: call(), calls))


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python scripts/NAME.py ARGS`` as a user runs it (its own process, errors as it prints them)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)


def load_script(name: str) -> Any:
    """``scripts/NAME.py`` as a module, so tests call its functions (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_device_refused(*command: str) -> None:
    """``command --device tpu`` (and ``--device cuda`` without a GPU) fails with one line, no traceback."""
    result = run_veil(*command, "--device", "tpu")
    assert result.returncode != 0 and "--device must be cpu or cuda" in result.stderr
    assert "Traceback" not in result.stderr
    if not torch.cuda.is_available():
        result = run_veil(*command, "--device", "cuda")
        assert result.returncode != 0 and "no CUDA GPU is visible" in result.stderr
        assert "Traceback" not in result.stderr


def _require(path: Path) -> Path:
    """Return ``path`` or skip, so a user's clone without ../shared still passes."""
    if not path.exists():
        pytest.skip(f"../shared not found (looked for {path}); real-data tests need the shared folder")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder next to the repository."""
    return _require(SHARED_DIR)


@pytest.fixture(scope="session")
def fddb_folds(shared_dir: Path) -> Path:
    """The complete official FDDB annotations (no images)."""
    return _require(shared_dir / "data" / "fddb")


@pytest.fixture(scope="session")
def fddb_sample(shared_dir: Path) -> Path:
    """7 real FDDB images in folds 1 and 6 with their annotations."""
    return _require(shared_dir / "data" / "fddb-sample")


@pytest.fixture(scope="session")
def widerface_sample(shared_dir: Path) -> Path:
    """10 real WIDER FACE images (6 train, 4 val) with official-format ground truth."""
    return _require(shared_dir / "data" / "widerface-sample")


@pytest.fixture(scope="session")
def weights(shared_dir: Path) -> Path:
    """The default FaceBoxes checkpoint (FaceBoxes.PyTorch layout)."""
    return _require(shared_dir / "weights" / "faceboxes" / "FaceBoxes.pth")


@pytest.fixture(scope="session")
def alt_weights(shared_dir: Path) -> Path:
    """The second checkpoint, whose parameter names need a key mapping."""
    return _require(shared_dir / "weights" / "faceboxes" / "faceboxes_alt.pth")


@pytest.fixture(scope="session")
def faceboxes(weights: Path):  # type: ignore[no-untyped-def]
    """FaceBoxes with real weights, loaded once per session (read-only use in tests).

    Shared by many tests, so a test that trains or reloads it in place would corrupt the ones after it:
    the session ends by checking that its parameters and modules are those it was loaded with.
    """
    from veil.faceboxes.registry import create_model

    model = create_model("faceboxes", weights)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    yield model
    state = model.state_dict()
    assert state.keys() == snapshot.keys(), "a test changed the shared FaceBoxes' modules; deepcopy it first"
    changed = [k for k, v in snapshot.items() if not torch.equal(v, state[k])]
    assert not changed, f"a test changed the shared FaceBoxes' weights ({changed[0]}, ...); deepcopy it first"


@pytest.fixture(scope="session")
def mask_scenes(shared_dir: Path) -> Path:
    """552 real street scenes with 2,128 face boxes in FDDB layout."""
    return _require(shared_dir / "data" / "mask-scenes")


# -- a real Triton server (tests/test_serve_*.py; helpers in tests/serving.py) -----------------
@pytest.fixture(scope="session")
def serve_images(fddb_sample: Path) -> list[torch.Tensor]:
    """Three real FDDB photos for the serving tests."""
    from veil.imageio import load_image

    paths = sorted(fddb_sample.rglob("*.jpg"))[:3]
    return [load_image(p) for p in paths]


@pytest.fixture(scope="session")
def serve_parts(weights: Path) -> dict[str, Any]:
    """Local reference: clean detector, a distinct noise-trained tail, and one fixed noise sample."""
    from serving import FixedNoise
    from veil.faceboxes.detect import Detector, build_detector
    from veil.serve.export import noisy_tail_from_state_dict
    from veil.serve.validate import ACTIVATION_DIMS

    clean = build_detector(weights)
    base_tail = cast(nn.Module, clean.tail)
    state = {k: v.clone() for k, v in base_tail.state_dict().items()}
    for k in state:
        if k.endswith("bias") and "conf" in k:
            state[k] = (state[k].view(-1, 2) + torch.tensor([0.3, -0.3])).view(-1)  # routing is visible
    noisy_tail = noisy_tail_from_state_dict(base_tail, state)
    noise = FixedNoise(torch.randn(8, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(1)) * 0.5)
    noisy = Detector(clean.head, noisy_tail, noise=noise)
    return {"clean": clean, "noisy": noisy, "noise": noise, "noisy_tail": noisy_tail}


@pytest.fixture(scope="session", params=["python", "pytriton"])
def server(
    request: pytest.FixtureRequest, serve_parts: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The server on free loopback ports, with a record of what reached the tails, per engine."""
    from serving import TOKEN, DirRecorder, Recorder
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    engine = request.param
    folder = tmp_path_factory.mktemp(f"triton-{engine}")
    http_port, grpc_port, metrics_port = free_ports(3)
    config = ServerConfig(
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        access_token=TOKEN,
        log_file=folder / "triton.log",
        engine=engine,
        record_dir=folder / "received" if engine == "python" else None,
    )
    tails = serve_parts["clean"].tail, serve_parts["noisy_tail"]
    recorder: Recorder | DirRecorder
    if engine == "pytriton":
        recorder = Recorder()
        srv = VeilServer.from_tails(*tails, config, on_request=recorder)
    else:
        recorder = DirRecorder(folder / "received")
        srv = VeilServer.from_tails(*tails, config)
    srv.recorder = recorder  # type: ignore[attr-defined]
    with srv:
        yield srv
