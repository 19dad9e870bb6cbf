"""The README is the front door (short, its two commands first, its links alive); the docs build strictly."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _code_blocks(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S)]


def test_readme_is_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/ (the limit is 200)"


def test_readme_opens_with_install_demo_and_tests() -> None:
    blocks = _code_blocks(README.read_text())
    assert blocks[0] == "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/veil demo"
    assert blocks[1] == ".venv/bin/python -m pytest -q"


def test_readme_links_resolve() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to no docs page"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


NO_MKDOCS = importlib.util.find_spec("mkdocs") is None


@pytest.mark.skipif(NO_MKDOCS, reason="mkdocs not installed (pip install -e '.[dev]')")
def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a missing nav page or a bad API docstring fails."""
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="veil.protection.protect"') == 1
