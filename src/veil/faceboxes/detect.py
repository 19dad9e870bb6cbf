"""From network outputs to boxes: anchors (computed once per input size), decoding, NMS.

The :class:`Detector` runs the whole data path in order — image -> head -> noise -> tail -> boxes — so
the same object serves clean local inference, obfuscated local inference and (with the tail swapped
for a remote call) the Triton client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from veil.faceboxes.model import ANCHOR_DENSITY, ANCHOR_SIZES, ANCHOR_STEPS
from veil.imageio import Batch, preprocess

VARIANCES = (0.1, 0.2)


@lru_cache(maxsize=32)
def priors(height: int, width: int) -> Tensor:
    """FaceBoxes anchors (cx, cy, w, h), normalised to the input size, in the network's output order.

    Per feature-map cell, anchors go by size; a densified size s gets DENSITY[s]^2 anchors whose
    centres sit at offsets k/DENSITY (rows outer, columns inner), as in FaceBoxes.PyTorch.
    Cached: the layout only depends on the input size, so it is built once per size.
    """
    levels = []
    for step, sizes in zip(ANCHOR_STEPS, ANCHOR_SIZES, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        rows = torch.arange(fh, dtype=torch.float64).view(fh, 1, 1)
        cols = torch.arange(fw, dtype=torch.float64).view(1, fw, 1)
        per_size = []
        for s in sizes:
            d = ANCHOR_DENSITY.get(s, 1)
            offsets = (
                torch.arange(d, dtype=torch.float64) / d
                if d > 1
                else torch.tensor([0.5], dtype=torch.float64)
            )
            oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
            cy = (rows + oy.reshape(1, 1, -1)) * step / height
            cx = (cols + ox.reshape(1, 1, -1)) * step / width
            cy, cx = torch.broadcast_tensors(cy, cx)
            wh = torch.tensor([s / width, s / height], dtype=torch.float64).expand(*cx.shape, 2)
            per_size.append(torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), wh], dim=-1))
        levels.append(torch.cat(per_size, dim=2).reshape(-1, 4))
    out = torch.cat(levels).float()
    out.requires_grad_(False)
    return out


def decode(loc: Tensor, anchors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Regressions [..., A, 4] against anchors [A, 4] -> corner boxes (x1, y1, x2, y2), normalised."""
    centre = anchors[:, :2] + loc[..., :2] * variances[0] * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


@dataclass(frozen=True)
class PostProcess:
    """Score threshold, NMS and top-k limits (FaceBoxes' test settings by default)."""

    threshold: float = 0.05
    nms_iou: float = 0.3
    top_k: int = 5000
    keep_top_k: int = 750

    def __call__(self, loc: Tensor, conf: Tensor, batch: Batch) -> list[Tensor]:
        """Network outputs for a batch -> per image [M, 5] boxes+score in original pixel coordinates."""
        height, width = batch.tensor.shape[2], batch.tensor.shape[3]
        boxes = decode(loc.float(), priors(height, width).to(loc.device))
        scores = torch.softmax(conf.float(), dim=-1)[..., 1]
        results = []
        for i, ((oh, ow), (rh, rw)) in enumerate(zip(batch.original_sizes, batch.resized_sizes, strict=True)):
            s = scores[i]
            valid = s > self.threshold
            if (rh, rw) != (height, width):  # padded: anchors centred in the padding see no image
                centre = (boxes[i, :, :2] + boxes[i, :, 2:]) / 2
                valid &= (centre[:, 0] < rw / width) & (centre[:, 1] < rh / height)
            keep = torch.nonzero(valid).squeeze(1)
            if keep.numel() > self.top_k:
                keep = keep[s[keep].topk(self.top_k).indices]
            b, sc = boxes[i, keep], s[keep]
            b = b * torch.tensor([width * ow / rw, height * oh / rh] * 2, device=b.device)
            kept = nms(b, sc, self.nms_iou)[: self.keep_top_k]
            results.append(torch.cat([b[kept], sc[kept, None]], dim=1).cpu())
        return results


#: Something that maps an activation to (loc, conf logits): a local tail or a remote server.
TailFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class Detector:
    """image -> head -> noise -> tail -> boxes, batched.

    ``noise`` is applied to the head's activation before it reaches the tail; ``tail`` may be any
    callable with the tail's signature (e.g. a Triton client).
    """

    def __init__(
        self,
        head: nn.Module,
        tail: TailFn,
        noise: nn.Module | None = None,
        size: tuple[int, int] | None = (1024, 1024),
        resize: float = 1.0,
        post: PostProcess | None = None,
        mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0),
        device: str | torch.device = "cpu",
    ) -> None:
        self.head, self.tail, self.noise = head, tail, noise
        self.size, self.resize, self.mean_bgr = size, resize, mean_bgr
        self.post = post or PostProcess()
        self.device = torch.device(device)

    def preprocess(self, images: Sequence[Tensor]) -> Batch:
        return preprocess(
            images, size=self.size, resize=self.resize, mean_bgr=self.mean_bgr, device=self.device
        )

    @torch.inference_mode()
    def release(self, batch: Batch) -> Tensor:
        """What leaves the trusted zone for this batch: the (noisy) head activation."""
        activation = self.head(batch.tensor.to(self.device))
        return self.noise(activation) if self.noise is not None else activation

    @torch.inference_mode()
    def detect(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Boxes [M, 5] (x1, y1, x2, y2, score) per image, in the image's own pixel coordinates."""
        batch = self.preprocess(images)
        loc, conf = self.tail(self.release(batch))
        return self.post(loc, conf, batch)


def build_detector(
    weights: str | Path | None,
    *,
    model: str = "faceboxes",
    split: str | None = None,
    noise: nn.Module | None = None,
    size: tuple[int, int] | None = (1024, 1024),
    resize: float = 1.0,
    post: PostProcess | None = None,
    device: str = "cpu",
    verify: bool = False,
) -> Detector:
    """A ready :class:`Detector` from the registry, channels-last (the fast layout for CPU convolutions)."""
    from veil.faceboxes.registry import create_model, get_spec, split_model

    spec = get_spec(model)
    net = create_model(model, weights, verify=verify).to(device).to(memory_format=torch.channels_last)
    head, tail = split_model(net, split or spec.default_split)
    return Detector(
        head, tail, noise=noise, size=size, resize=resize, post=post, mean_bgr=spec.mean_bgr, device=device
    )


__all__ = ["Detector", "PostProcess", "build_detector", "decode", "priors"]
