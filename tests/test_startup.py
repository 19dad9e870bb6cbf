"""`veil --help` is fast: the CLI imports torch, tritonclient and matplotlib only inside the commands."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import run_veil

HEAVY = ("torch", "torchvision", "tritonclient", "pytriton", "matplotlib", "numpy")

SUBCOMMANDS = [
    [],
    ["demo"],
    ["detect"],
    ["audit"],
    ["train"],
    ["sweep"],
    ["tune-tail"],
    ["eval"],
    ["eval", "merge"],
    ["serve"],
    ["export"],
    ["export", "triton"],
    ["k8s"],
    ["k8s", "render"],
    ["models"],
]


def test_importing_the_cli_loads_no_heavy_module() -> None:
    code = f"import sys, veil.cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_takes_under_two_seconds() -> None:
    """Best of 3 in a fresh process each (6-13 s before, when every command imported torch at start)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        proc = run_veil("--help")
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    assert min(times) < 2.0, times


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "veil")
def test_every_help_still_works(command: list[str]) -> None:
    proc = run_veil(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: veil" in proc.stdout and "Traceback" not in proc.stderr
