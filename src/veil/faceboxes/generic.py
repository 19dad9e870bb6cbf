"""FaceBoxes on the generic path: its transforms as :class:`veil.protection.Protected` models.

    p = protect_faceboxes(weights)                          # veil.protect at the reference split (rdcl)
    q = from_transform("src/veil/faceboxes/transforms/faceboxes-inception3-alpha0.12", weights)
    q.release(x); q.tail(r)                                 # (loc, conf), as FaceBoxes(x) returns
    q.save("out/fb-0.12"); veil.export_triton("out/fb-0.12", "repo")   # served like any model

FaceBoxes declares its own split points (``FaceBoxes.split_points()`` / ``split(at)``), which
``veil.protect`` uses because its ``forward`` is not traceable by ``torch.fx``. A FaceBoxes transform
directory (``veil train``'s format: noise, trained tail, fine-tuned head block) becomes the same
``Protected`` a ``veil.protect`` user gets: same head, same noise tensors, same tail, so the same
release distribution and the same outputs on a given release. Inputs are preprocessed as FaceBoxes
expects (BGR, minus the mean in 0-255; :func:`veil.imageio.preprocess`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from veil.artifact import Transform, load_transform
from veil.faceboxes.pipeline import _load_part
from veil.faceboxes.registry import create_model, get_spec
from veil.protection import Protected, protect

#: The Triton model names' stem of FaceBoxes on the generic path (``face_detection_noisy``).
NAME = "face_detection"


def protect_faceboxes(
    weights: str | Path,
    *,
    split: str = "rdcl",
    alpha: float = 0.12,
    size: int = 1024,
    granularity: str = "channel",
) -> Protected:
    """``veil.protect`` on FaceBoxes: untrained noise at ``split``, ready for :meth:`Protected.fit`."""
    spec = get_spec("faceboxes")
    model = create_model("faceboxes", weights)
    example = torch.randn(1, 3, size, size) * 60.0  # the scale of mean-subtracted 0-255 pixels
    return protect(
        model,
        split=split,
        alpha=alpha,
        example=example,
        granularity=granularity,
        name=NAME,
        normalisation={"mean": list(spec.mean_bgr), "channels": "BGR"},
    )


def from_transform(transform: str | Path | Transform, weights: str | Path) -> Protected:
    """A FaceBoxes transform directory as a :class:`Protected` (its noise, head block and tail)."""
    tr = load_transform(transform, weights) if isinstance(transform, str | Path) else transform
    size = tuple(tr.meta.get("input_size", get_spec("faceboxes").input_size))
    p = protect_faceboxes(
        weights, split=tr.split, alpha=tr.alpha, size=int(size[0]), granularity=tr.noise.granularity
    )
    _load_part(p.tail, tr.tail_state, "tail")
    _load_part(p.head, tr.head_state, "head")
    p.noise = tr.noise
    p.head_trained = tr.head_state is not None
    p.meta["converted_from"] = {
        "release_sha256": tr.meta.get("release_sha256"),
        "path": tr.path.name if tr.path is not None else None,
    }
    return p
