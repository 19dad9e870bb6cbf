"""A small model registry: ``create_model(name, weights=...)`` and ``list_models()``.

Each entry knows how to build the network, which checkpoint layouts it understands, where it can be
split, and how its inputs are normalised: everything the pipeline needs to know about a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from veil.errors import UnknownModelError
from veil.faceboxes import model as faceboxes
from veil.models.checkpoint import KeyMap, load_into, read_state_dict, verify_sha256


def _strip_module(key: str) -> str:
    return key.removeprefix("module.")


def _faceboxes_alt(key: str) -> str:
    key = _strip_module(key).removeprefix("feature_extractor.")
    key = key.replace(".norm.", ".bn.")
    if key.startswith("loc_layers."):
        key = "loc." + key.removeprefix("loc_layers.")
    if key.startswith("conf_layers."):
        key = "conf." + key.removeprefix("conf_layers.")
    return key


@dataclass(frozen=True)
class ModelSpec:
    """What veil needs to know about a model family."""

    name: str
    build: Callable[[], nn.Module]
    split_points: tuple[str, ...]
    default_split: str
    input_size: tuple[int, int]  # (height, width) the reference setting uses
    mean_bgr: tuple[float, float, float]
    key_maps: list[KeyMap] = field(default_factory=list)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {
    "faceboxes": ModelSpec(
        name="faceboxes",
        build=faceboxes.FaceBoxes,
        split_points=faceboxes.SPLIT_POINTS,
        default_split=faceboxes.DEFAULT_SPLIT,
        input_size=(1024, 1024),
        mean_bgr=(104.0, 117.0, 123.0),
        key_maps=[_strip_module, _faceboxes_alt],
        description="FaceBoxes face detector (Zhang et al., IJCB 2017), FaceBoxes.PyTorch layout",
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or an error listing the known models."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(list_models())}") from None


def create_model(
    name: str = "faceboxes", weights: str | Path | None = None, *, verify: bool = False
) -> nn.Module:
    """Build ``name`` in eval mode, loading ``weights`` (any known key layout) when given."""
    spec = get_spec(name)
    model = spec.build()
    if weights is not None:
        path = Path(weights)
        state = read_state_dict(path)
        if verify:
            verify_sha256(path)
        load_into(model, state, path, spec.key_maps)
    return model.eval()


def split_model(model: nn.Module, at: str) -> tuple[nn.Module, nn.Module]:
    """(head, tail) of a registry model cut after ``at``; ``tail(head(x)) == model(x)``."""
    split = getattr(model, "split", None)
    if split is None:
        raise UnknownModelError(f"{type(model).__name__} offers no split points; build it with create_model")
    head, tail = split(at)
    return head, tail
