"""The reference log block, the JSON schema round trip and the atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.faceboxes.eval.report import EvalResult, fold_mean, format_tr_results, write_json_atomic


def test_format_tr_results_two_folds_line_by_line() -> None:
    text = format_tr_results({"10": 0.25, "2": 0.9491256561145955})
    # (0.9491256561145955 + 0.25) / 2, printed with repr.
    expected = (
        "==================== Results ====================\n"
        "FDDB-fold-2 Val AP: 0.9491256561145955\n"
        "FDDB-fold-10 Val AP: 0.25\n"
        "FDDB Dataset Average AP: 0.5995628280572978\n"
        "=================================================\n"
        "mAP: 0.5995628280572978"
    )
    assert text.splitlines() == expected.splitlines()
    assert not text.endswith("\n")


def test_fold_mean_sums_in_fold_order() -> None:
    folds = {str(i): 0.1 * i for i in range(1, 11)}
    assert fold_mean(folds) == sum(0.1 * i for i in range(1, 11)) / 10
    with pytest.raises(ValueError):
        fold_mean({})


def _result() -> EvalResult:
    return EvalResult(
        folds={"2": 0.5, "1": 0.9491256561145955},
        average_ap=0.7245628280572977,
        map=0.7245628280572977,
        pooled_ap=0.73,
        roc={"tpr_at_1000": {"discrete": 0.9, "continuous": 0.7}, "num_faces": 5171},
        images=2845,
        faces=5171,
        seconds=12.5,
    )


def test_json_schema_and_round_trip(tmp_path: Path) -> None:
    res = _result()
    data = res.to_json()
    assert list(data) == ["folds", "average_ap", "map", "pooled_ap", "roc", "images", "faces", "seconds"]
    assert list(data["folds"]) == ["1", "2"]
    path = tmp_path / "out" / "result.json"
    write_json_atomic(path, data)
    loaded = json.loads(path.read_text())
    assert loaded == data
    back = EvalResult.from_json(loaded)
    assert back.to_json() == data
    assert back.folds["1"] == 0.9491256561145955


def test_atomic_writer_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_writer_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
