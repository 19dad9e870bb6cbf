"""``veil audit --peers``: the peer defences inside the audit, on the shipped mask-compliance default.

One tiny real run (two peers, LFW faces cut like the classifier's crops, a 5-step decoder) checks the wiring:
the frontier lands in metrics.json (valid against its schema), the report and every target's page; the
refusals are one line each, before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchvision.io import encode_png

import veil
from conftest import run_veil

MASK_DEFAULT = (
    Path(veil.__file__).parent / "mask_compliance" / "transforms" / "mask-compliance-features.11-alpha0.2"
)


def _one_line(result: object) -> str:
    assert result.returncode != 0  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # type: ignore[attr-defined]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--peer-levels", "gaussian=1"], "--peers"),
        (["--peers", "gaussian", "--model", "torchvision.models:mobilenet_v3_small"], "ModelEntry.peers"),
        (["--peers", "gaussian", "--peer-levels", "blur=1"], "--peer-levels"),
        (["--peers", "fog"], "--peers"),
    ],
)
def test_peer_options_are_refused_in_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    base = ["audit", "-t", str(MASK_DEFAULT), "--aux", str(tmp_path), "--eval", str(tmp_path)]
    if "--model" not in args:
        base += ["--model", "mask-compliance"]
    line = _one_line(run_veil(*base, *args, "--out", str(tmp_path / "out")))
    assert words in line and not (tmp_path / "out").exists()


def test_peers_frontier_in_the_audit(shared_dir: Path, tmp_path: Path) -> None:
    import jsonschema

    from veil.imageio import list_images, load_image
    from veil.mask_compliance.data import centre_crop

    lfw = shared_dir / "data" / "lfw"
    for part, count in (("attack", 48), ("test", 12)):
        (tmp_path / part).mkdir()
        for path in list_images(lfw / part)[:count]:
            crop = centre_crop(load_image(path), 0.55)
            (tmp_path / part / f"{path.stem}.png").write_bytes(encode_png(crop).numpy().tobytes())
    out = tmp_path / "audit"
    result = run_veil(
        "audit", "--model", "mask-compliance", "-t", str(MASK_DEFAULT), "--aux", str(tmp_path / "attack"),
        "--eval", str(tmp_path / "test"), "--steps", "5", "--adapt-steps", "1", "--width", "8",
        "--linkage-steps", "2", "--ks", "1,16", "--peers", "gaussian,blur",
        "--peer-levels", "gaussian=2,blur=3", "--out", str(out), "--quiet", "--threads", "1",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(
        metrics, json.loads((MASK_DEFAULT.parents[2] / "audit" / "metrics.schema.json").read_text())
    )
    rows = {(r["family"], r["level"]): r for r in metrics["peers"]["rows"]}
    assert set(rows) == {("clean", 0.0), ("gaussian", 2.0), ("blur", 3.0), ("veil", 0.2)}
    assert rows[("clean", 0.0)]["accuracy_retained"] == 1.0
    for row in rows.values():
        assert set(row["ssim"]["decoder"]) == {"1", "16"} and 0 < row["accuracy_retained"] <= 1.1
    assert rows[("blur", 3.0)]["ssim"]["decoder"]["16"] == rows[("blur", 3.0)]["ssim"]["decoder"]["1"]
    assert metrics["peers"]["verdicts"] and (out / "peers" / "peers-frontier.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "## Peer defences at the same split" in report and "peers/peers-frontier.png" in report
    assert (
        "../peers/peers-frontier.png"
        in (out / "targets" / "mask-compliance-features.11-alpha0.2.md").read_text()
    )
