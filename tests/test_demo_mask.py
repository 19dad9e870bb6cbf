"""``veil demo --task mask-compliance``: two annotated photos through one real Triton serving both tails.

The private counts are what the local tails give on the very releases that were sent (FaceBoxes' tail on
the photo's release -> the same faces; the classifier's tail on the crops' release -> the same classes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import veil
from conftest import run_veil
from veil.assets import default_weights
from veil.demo_mask import faces_of, format_table, run_mask_demo
from veil.errors import ServingError
from veil.faceboxes.pipeline import load_pipeline
from veil.faceboxes.registry import create_model
from veil.faceboxes.shipped import shipped_transforms
from veil.imageio import load_image
from veil.mask_compliance.model import load_classifier
from veil.mask_compliance.shipped import shipped_default
from veil.serve.server import VeilServer


@pytest.fixture(scope="module")
def mask_scenes(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "mask-scenes"
    if not (root / "annotations").is_dir():
        pytest.skip(f"no mask-scenes annotations under {root}")
    return root


@pytest.mark.slow
def test_the_whole_pipeline_on_two_photos(
    tmp_path: Path, mask_scenes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    results = run_mask_demo(mask_scenes, out, max_images=2)
    printed = capsys.readouterr().out
    assert "serving face_detection_noisy, mask_compliance_noisy" in printed  # one server, both tails
    assert len(results) == 2
    weights = default_weights()
    fb_dir = shipped_transforms()[0.12]
    saved = tmp_path / "fb"
    from veil.faceboxes.generic import from_transform

    from_transform(fb_dir, weights).save(saved)
    fb_q = veil.load(saved, create_model("faceboxes", weights))
    default = shipped_default()
    assert default is not None
    mask_q = veil.load(default, load_classifier())
    pipe = load_pipeline(weights, fb_dir)
    for r in results:
        a, b, c = (int((r.private.classes == k).sum()) for k in range(3))
        line = f"private {len(r.private.classes)} faces: {a} with mask, {b} without, {c} incorrect"
        assert f"{r.photo.name}: annotated {len(r.photo.labels)} faces:" in printed
        assert line in printed
        # only releases left: FaceBoxes' activation (never the pixels), then the crops' release
        assert r.sent[0].shape[1:2] == (128,) and r.sent[0].dtype.name == "float32"
        batch = pipe.preprocess([load_image(r.photo.path)])
        with torch.inference_mode():
            loc, conf = fb_q.tail(torch.from_numpy(r.sent[0]))
            local = faces_of(pipe.post(loc, conf, batch)[0])
        assert local.shape == r.private.detections.shape
        assert (local - r.private.detections).abs().max() < 1e-2
        if len(r.private.classes):
            assert r.sent[1].shape[0] == len(r.private.classes)
            with torch.inference_mode():
                classes = mask_q.tail(torch.from_numpy(r.sent[1])).argmax(1)
            assert torch.equal(classes, r.private.classes)
        assert (out / f"{r.photo.name.replace('/', '_')}_mask.png").stat().st_size > 10_000
    table = format_table(results)
    assert table.splitlines()[1].startswith("annotated") and "private" in table


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = run_veil("demo", "--task", "mask-compliance", "-d", str(tmp_path / "nope"), "-o", str(tmp_path))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "--dataset" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    task = run_veil("demo", "--task", "cats", "-o", str(tmp_path))
    assert task.returncode != 0 and "--task must be" in task.stderr


def test_two_transforms_with_one_name_are_refused() -> None:
    default = shipped_default()
    assert default is not None
    with pytest.raises(ServingError, match="also served as mask_compliance_noisy"):
        VeilServer.from_transform([default, default])
