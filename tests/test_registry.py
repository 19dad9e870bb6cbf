"""The public model registry (issue 33): register_model, entry points, resolve_model, `veil models`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import veil
from conftest import run_veil
from veil.errors import UnknownModelError, VeilError
from veil.models import public
from veil.models.public import build_model, list_entries, register_model, resolve_model, unregister_model

SHIPPED = Path(veil.__file__).resolve().parent / "faceboxes" / "transforms"


def _tiny() -> nn.Module:
    """A tiny MLP for the tests."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.fixture
def clean() -> Iterator[None]:
    names = {e.name for e in list_entries(load=False)}
    yield
    for entry in list_entries(load=False):
        if entry.name not in names:
            unregister_model(entry.name)


def _shipped_default_split() -> str:
    splits = {
        json.loads(f.read_text())["split"]
        for f in SHIPPED.glob("*/transform.json")
        if json.loads(f.read_text()).get("default") is True
    }
    assert len(splits) == 1, splits
    return splits.pop()


def test_register_list_resolve(clean: None) -> None:
    entry = veil.register_model("tiny-mlp", _tiny, split="1", example=(3, 4))
    assert entry.description == "A tiny MLP for the tests."
    listed = {e.name: e for e in list_entries()}
    assert listed["tiny-mlp"].source == "register_model"
    assert listed["faceboxes"].source == "built-in"
    assert resolve_model("tiny-mlp") is _tiny
    assert resolve_model("Tiny-MLP") is _tiny
    model = build_model("tiny-mlp")
    assert not model.training and model(torch.zeros(3, 4)).shape == (3, 2)


def test_duplicates_and_bad_names_refused_in_one_line(clean: None) -> None:
    register_model("dup", _tiny)
    with pytest.raises(VeilError, match="already registered; pass overwrite=True") as err:
        register_model("dup", _tiny)
    assert "\n" not in str(err.value)
    other = register_model("dup", lambda: nn.Identity(), overwrite=True)
    assert resolve_model("dup") is other.factory
    with pytest.raises(VeilError, match="built in"):
        register_model("faceboxes", _tiny, overwrite=True)
    for bad in ("", "pkg.mod:factory", "two words", "1abc", "a/b", 3):
        with pytest.raises(VeilError, match="is not valid"):
            register_model(bad, _tiny)  # type: ignore[arg-type]
    with pytest.raises(VeilError, match="must be callable"):
        register_model("notcallable", nn.Linear(1, 1).weight)  # type: ignore[arg-type]


def test_module_factory_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "veil_test_zoo.py").write_text(
        textwrap.dedent(
            '''
            from torch import nn
            NOT_CALLABLE = 3
            def small(weights=None):
                """Small net."""
                net = nn.Linear(2, 2)
                if weights is not None:
                    import torch
                    net.load_state_dict(torch.load(weights))
                return net
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = resolve_model("veil_test_zoo:small")
    assert isinstance(factory(), nn.Linear)
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    assert isinstance(build_model("veil_test_zoo:small", weights=tmp_path / "w.pt"), nn.Linear)
    for spec, message in [
        ("veil_test_zoo:missing", "has no attribute 'missing'"),
        ("veil_test_zoo:NOT_CALLABLE", "is a int, not a callable factory"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("veil_test_zoo:", "is not 'package.module:factory'"),
        (":small", "is not 'package.module:factory'"),
        ("  ", "is empty"),
    ]:
        with pytest.raises(VeilError, match=message) as err:
            resolve_model(spec)
        assert "\n" not in str(err.value)


def test_unknown_name_lists_known(clean: None) -> None:
    register_model("known-one", _tiny)
    with pytest.raises(
        UnknownModelError, match=r"unknown model 'nope': choose one of (.+, )?faceboxes, (.+, )?known-one, or"
    ) as err:
        resolve_model("nope")
    assert "\n" not in str(err.value)
    with pytest.raises(VeilError, match="takes no weights"):
        build_model("known-one", weights="x.pt")


def _dist(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[veil.models]\n{entry_points}\n")


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "veil_test_plugin.py").write_text(
        'from torch import nn\ndef make():\n    """Plugin MLP."""\n    return nn.Linear(3, 1)\n'
        'make.veil_split = "x"\n'
    )
    _dist(
        tmp_path,
        "veil_test_plugin",
        "plugin-mlp = veil_test_plugin:make\n"
        "broken-one = veil_test_plugin:absent\n"
        "faceboxes = veil_test_plugin:make",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_listed_loaded_lazily_and_broken_reported(plugin: Path) -> None:
    lazy = {e.name: e for e in list_entries(load=False)}
    assert (
        lazy["plugin-mlp"].factory is None and lazy["plugin-mlp"].source == "entry point (veil_test_plugin)"
    )
    listed = {e.name: e for e in list_entries()}
    mlp = listed["plugin-mlp"]
    assert mlp.error is None and mlp.description == "Plugin MLP." and mlp.split == "x"
    assert listed["broken-one"].error is not None and "\n" not in listed["broken-one"].error
    shadow = [e for e in list_entries() if e.name == "faceboxes"]  # an entry point cannot shadow a built-in
    assert [e.source for e in shadow] == ["built-in", "entry point (veil_test_plugin)"]
    assert shadow[1].error == "name 'faceboxes' is already taken by a built-in model"
    import veil.faceboxes

    assert resolve_model("faceboxes") is veil.faceboxes.faceboxes
    assert isinstance(resolve_model("plugin-mlp")(), nn.Linear)
    with pytest.raises(VeilError, match=r"'broken-one' .* is broken: .*has no attribute 'absent'"):
        resolve_model("broken-one")


def test_cli_lists_entry_points_and_broken_in_one_line(plugin: Path) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", "from veil.cli.main import main; main()", "models"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("\t")[0]: line for line in proc.stdout.splitlines()}
    assert (
        "entry point (veil_test_plugin) veil_test_plugin:make\tPlugin MLP.\tdefault split: x"
        in lines["plugin-mlp"]
    )
    assert "broken:" in lines["broken-one"]
    assert "Traceback" not in proc.stderr


def test_veil_models_cli_truthful_default_split() -> None:
    proc = run_veil("models")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("faceboxes\t"))
    split = _shipped_default_split()
    assert split == "inception3"
    assert "built-in" in line and "rdcl, inception1, inception2, inception3" in line
    assert f"(default {split}, from the shipped default transform)" in line
    assert "default rdcl" not in line


def test_listing_imports_no_torch_and_constants_match() -> None:
    code = "import sys, veil.models.public as p; p.list_entries(); print('torch' in sys.modules)"
    # FaceBoxes is found through veil's own entry point (the core imports no task), still without torch
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
    import veil.faceboxes
    from veil.faceboxes.model import SPLIT_POINTS
    from veil.faceboxes.shipped import shipped_default_split

    assert veil.faceboxes.SPLIT_POINTS == SPLIT_POINTS
    assert shipped_default_split() == _shipped_default_split()


def test_builtin_faceboxes_still_via_create_model() -> None:
    from veil.faceboxes.registry import create_model, get_spec, list_models

    assert list_models() == ["faceboxes"] and get_spec("faceboxes").default_split == "rdcl"
    assert type(resolve_model("faceboxes")()) is type(create_model("faceboxes"))


def test_register_model_works_with_protect(clean: None) -> None:
    veil.register_model("protect-mlp", _tiny, example=lambda: torch.randn(5, 4))
    entry = public.resolve_entry("protect-mlp")
    model = resolve_model("protect-mlp")()
    example = entry.example_input()
    split = veil.split_points(model, example)[1]
    p = veil.protect(model, split=split, alpha=0.2, example=example)
    with torch.no_grad():
        assert p(example).shape == (5, 2)
