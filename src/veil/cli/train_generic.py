"""``veil train --model M`` for any model that is not a FaceBoxes detector: ``veil.protect`` + ``fit``.

The model (a registered name or ``package.module:factory``, with ``--weights``) is split at ``--split``,
the noise (and the tail, unless ``--noise-only``) is fitted label-free on the images of ``--data``: each
resized to ``--size`` H[xW], scaled to [0, 1] and, with ``--mean``/``--std``, normalised per channel,
the normalisation recorded in the transform for the client. The transform directory is what
``veil serve --transform``, ``veil export triton --transform`` and ``veil.load(dir, model)`` read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import InputError, VeilError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from veil.cli.common import ModelChoice

#: The largest side ``--size`` accepts for a generic model (as for FaceBoxes' input).
MAX_SIDE = 4096


def parse_hw(text: str | None) -> tuple[int, int] | None:
    """``"224"`` -> (224, 224), ``"192x256"`` -> (192, 256) (height x width); a bad one is one line."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise VeilError(f"--size must be N or HxW in pixels (e.g. 224 or 192x256), got {text!r}") from None
    if len(parts) > 2 or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise VeilError(f"--size must be N or HxW with sides from 1 to {MAX_SIDE}, got {text!r}")
    return h, w


def parse_channels(text: str | None, option: str) -> list[float] | None:
    """``"0.485,0.456,0.406"`` as floats (finite; ``--std`` also > 0), or None when not given."""
    if text is None:
        return None
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VeilError(f"{option} must be comma-separated numbers, one per channel, got {text!r}") from None
    if (
        not values
        or not all(math.isfinite(v) for v in values)
        or (option == "--std" and not all(v > 0 for v in values))
    ):
        raise VeilError(f"{option} must be finite numbers{' > 0' if option == '--std' else ''}, got {text!r}")
    return values


@dataclass
class GenericOptions:
    """What ``veil train`` passes to :func:`train_generic` for a model that is not FaceBoxes."""

    data: Path
    size: tuple[int, int] | None
    split: str | None
    alpha: float
    steps: int
    out: Path
    batch_size: int = 8
    granularity: str = "channel"
    mean: list[float] | None = None
    std: list[float] | None = None
    task: str = "regression"
    lr: float = 0.05
    lr_tail: float = 1e-4
    lr_head: float = 1e-4
    train_tail: bool = True
    train_head: bool = False
    smax_factor: float = 8.0
    suppress_factor: float = 0.95
    suppress_max: float = 1.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


class ImageFolder:
    """The images under a folder as float tensors (3, H, W): resized, in [0, 1], normalised if asked."""

    def __init__(self, folder: Path, size: tuple[int, int], mean: Any, std: Any) -> None:
        from veil.imageio import list_images

        if not folder.is_dir():
            raise InputError(f"--data {folder}: not a folder (give a folder of images)")
        self.files, self.size, self.mean, self.std = list_images(folder), size, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        import torch.nn.functional as F

        from veil.imageio import load_image

        img = load_image(self.files[index]).float().div_(255.0).unsqueeze(0)
        x = F.interpolate(img, size=self.size, mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.clamp_(0.0, 1.0)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x


def _channels(values: list[float] | None, option: str) -> torch.Tensor | None:
    import torch

    if values is None:
        return None
    if len(values) not in (1, 3):
        raise VeilError(f"{option} takes 1 or 3 values (RGB), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def _size(opts: GenericOptions, model_example: Any) -> tuple[int, int]:
    if opts.size is not None:
        return opts.size
    shape = tuple(getattr(model_example, "shape", ()) or ())
    if len(shape) == 4:  # the registered example: (B, C, H, W)
        return int(shape[2]), int(shape[3])
    raise VeilError("--size H[xW] is needed: the input size the images are resized to (e.g. --size 224)")


def train_generic(choice: ModelChoice, opts: GenericOptions) -> tuple[Path, dict[str, Any]]:
    """Protect ``choice``'s model at ``opts.split``, fit it on ``opts.data``; (dir, its transform.json)."""
    import torch
    from torch.utils.data import DataLoader

    import veil
    from veil.artifact import state_fingerprint

    model: nn.Module = choice.build()
    if state_fingerprint(model) != state_fingerprint(choice.build()):  # veil.load needs this very model
        raise VeilError(
            f"{choice.spec} builds different weights on every call (random initialisation?): its transform "
            "could never be loaded again; pass --weights, or a factory that loads fixed weights"
        )
    model = model.to(opts.device)
    size = _size(opts, choice.entry.example_input())
    mean, std = _channels(opts.mean, "--mean"), _channels(opts.std, "--std")
    images = ImageFolder(opts.data, size, mean, std)
    example = images[0].unsqueeze(0).to(opts.device)
    split = opts.split or choice.entry.split
    if split is None:
        points = veil.split_points(model, example)
        raise VeilError(
            f"--split is needed for {choice.spec}: one of {', '.join(points[:12])}"
            + (f" ... ({len(points)} in all)" if len(points) > 12 else "")
        )
    normalisation: dict[str, Any] = {"scale": 1 / 255, "resize": list(size)}
    normalisation["mean"] = opts.mean
    normalisation["std"] = opts.std
    p = veil.protect(
        model,
        split=split,
        alpha=opts.alpha,
        example=example,
        granularity=opts.granularity,
        task=opts.task,
        smax_factor=opts.smax_factor,
        normalisation=normalisation,
    )
    loader: DataLoader[Tensor] = DataLoader(
        images,  # type: ignore[arg-type]  # a map-style dataset: __len__ and __getitem__
        batch_size=min(opts.batch_size, len(images)),
        shuffle=True,
        generator=torch.Generator().manual_seed(opts.seed),
    )
    p.fit(
        loader,
        steps=opts.steps,
        lr=opts.lr,
        lr_tail=opts.lr_tail,
        lr_head=opts.lr_head,
        progress=opts.progress,
        train_tail=opts.train_tail,
        train_head=opts.train_head,
        suppress_factor=opts.suppress_factor,
        suppress_max=opts.suppress_max,
    )
    out = p.save(opts.out)
    return out, json.loads((out / "transform.json").read_text())
