"""FaceBoxes, veil's first task: a face detector on the generic path.

Everything FaceBoxes-specific lives here, and nothing in veil's generic core imports it:

* ``model``: the network with its split points (``FaceBoxes.split(at)``), anchors;
* ``registry``: checkpoint layouts, the normalisation (BGR mean), the reference input size;
* ``detect``: priors, decoding, NMS; ``tiles``: tiled detection; ``pipeline``: head -> noise -> tail;
* ``multibox``: the supervised MultiBox loss; ``data``: FDDB / WIDER FACE readers and training
  mosaics; ``eval``: AP, FDDB's discrete ROC, reports; ``shipped``: the transforms in ``transforms/``.

veil finds FaceBoxes the way it finds any installed model: through the ``veil.models`` entry point
``faceboxes = "veil.faceboxes:ENTRY"`` (see ``pyproject.toml``). This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.faceboxes.shipped import shipped_default_split
from veil.models.public import ModelEntry

if TYPE_CHECKING:
    from torch import nn

#: Where FaceBoxes may be cut (== veil.faceboxes.model.SPLIT_POINTS; kept here so listing needs no torch).
SPLIT_POINTS: tuple[str, ...] = ("rdcl", "inception1", "inception2", "inception3")


def faceboxes(weights: str | Path | None = None, *, verify: bool = False) -> nn.Module:
    """FaceBoxes face detector (Zhang et al., IJCB 2017), FaceBoxes.PyTorch layout, in eval mode."""
    from veil.faceboxes.registry import create_model

    return create_model("faceboxes", weights, verify=verify)


def peers() -> Any:
    """``veil audit --peers``: AP on the mask-scenes test half at 512, its train half to fit peers on."""
    from veil.faceboxes.peers import peers as make

    return make()


def _split_note() -> str:
    shipped = shipped_default_split()
    return f"default {shipped}, from the shipped default transform" if shipped else "no transform"


#: The registry entry (loaded through the entry point; ``task`` tells FaceBoxes-only commands apart).
ENTRY = ModelEntry(
    name="faceboxes",
    source="built-in",
    factory=faceboxes,
    description="FaceBoxes face detector (Zhang et al., IJCB 2017), FaceBoxes.PyTorch layout",
    split="rdcl",  # the reference design's split (TR-4928: after the first block, 1x128x32x32 on the wire)
    split_points=SPLIT_POINTS,
    example=(1, 3, 1024, 1024),
    task="faceboxes",
    split_note=_split_note(),
    peers=peers,  # `veil audit --peers`: AP on real scenes, scenes to fit peers on
)
