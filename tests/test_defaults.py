"""Honest defaults (issue 35): --alpha resolves to one named transform, shipped names work as --transform,
`veil train --recipe shipped-default`, help texts say what 0 means, user outputs follow the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_veil
from veil.cli.common import resolve_transform
from veil.errors import VeilError
from veil.faceboxes.shipped import resolve_alpha, shipped_by_name, shipped_transforms


def test_alpha_names_the_default_split_and_lists_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    by_name = shipped_by_name()
    if "faceboxes-rdcl-alpha0.8" not in by_name:
        pytest.skip("the RDCL transform is not shipped in this checkout")
    chosen, others = resolve_alpha(0.8)
    assert chosen == shipped_transforms()[0.8] and chosen is not None and "inception3" in chosen.name
    assert others == ["faceboxes-rdcl-alpha0.8"]
    assert resolve_transform(None, 0.8) == chosen
    assert "also shipped: --transform faceboxes-rdcl-alpha0.8" in capsys.readouterr().err
    # a shipped name is a --transform; an existing path of that name would win
    assert resolve_transform(Path("faceboxes-rdcl-alpha0.8"), None) == by_name["faceboxes-rdcl-alpha0.8"]
    assert resolve_transform(Path("no-such-dir"), None) == Path("no-such-dir")


def test_alpha_without_a_shipped_transform_is_one_line() -> None:
    with pytest.raises(VeilError, match=r"no shipped transform for --alpha 0.33 .*--transform DIR"):
        resolve_transform(None, 0.33)


def _help(*command: str) -> list[str]:
    """``veil COMMAND --help`` one option per line (wide enough that nothing wraps)."""
    run = subprocess.run(
        [sys.executable, "-c", "from veil.cli.main import main; main()", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COLUMNS": "400", "TERM": "dumb"},
    )
    return run.stdout.splitlines()


def test_help_texts_say_what_zero_means() -> None:
    draws = next(line for line in _help("eval") if "--draws" in line)
    assert "0 = auto: 3 with a transform, 1 without" in draws and "[default: 0]" not in draws
    assert any("shipped-default" in line for line in _help("train"))


def test_train_recipe_is_checked_and_alpha_needed() -> None:
    bad = run_veil("train", "--images", "x", "--out", "o", "--recipe", "fast")
    assert bad.returncode == 2 and "--recipe must be one of shipped-default" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    none = run_veil("train", "--images", "x", "--out", "o")
    assert none.returncode == 2 and "--alpha is needed" in none.stderr


def test_k8s_render_refuses_alpha_outside_the_range() -> None:
    run = run_veil("k8s", "render", "--alpha", "0.2,1.5")
    assert run.returncode == 2 and "--alpha must be in (0, 1), got 1.5" in run.stderr


def test_user_outputs_follow_the_umask(tmp_path: Path) -> None:
    from veil.faceboxes.eval.report import write_json_atomic
    from veil.imageio import atomic_write_bytes
    from veil.k8s import K8sConfig, render, write_manifests

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.png", b"x")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        written = write_manifests(render(K8sConfig()), tmp_path / "k8s")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.png", tmp_path / "r.json", written[0]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
