"""FaceBoxes (Zhang et al., IJCB 2017) with explicit split points.

The attribute names follow the FaceBoxes.PyTorch parameter layout so that its checkpoints load with
``strict=True``. The network is written as a chain of named stages, because veil cuts it in two: the
*head* runs where the data lives, the *tail* runs on the server. ``tail(head(x))`` is the full forward,
computed by the very same modules, so the split costs nothing in accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.errors import SplitPointError

#: Where the network may be cut, in data-flow order. All give 128 x H/32 x W/32 (128x32x32 at 1024^2).
SPLIT_POINTS: tuple[str, ...] = ("rdcl", "inception1", "inception2", "inception3")

#: The reference design's split: after the Rapidly Digested Convolutional Layers.
DEFAULT_SPLIT = "rdcl"

#: Anchor layout of the three detection layers (FaceBoxes paper, section 3.3).
ANCHOR_SIZES: tuple[tuple[int, ...], ...] = ((32, 64, 128), (256,), (512,))
ANCHOR_STEPS: tuple[int, ...] = (32, 64, 128)
#: Anchor densification: an anchor of size s gets DENSITY[s]^2 copies per cell.
ANCHOR_DENSITY: dict[int, int] = {32: 4, 64: 2}
ANCHORS_PER_CELL: tuple[int, ...] = tuple(
    sum(ANCHOR_DENSITY.get(s, 1) ** 2 for s in sizes) for sizes in ANCHOR_SIZES
)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CReLU(nn.Module):
    """Conv -> BatchNorm -> concat(x, -x) -> ReLU: doubles channels at half the cost (RDCL)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], dim=1))


class Inception(nn.Module):
    """Four branches of 32 channels each (1x1, pool+1x1, 3x3, double 3x3) -> 128 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(128, 32, 1)
        self.branch1x1_2 = BasicConv2d(128, 32, 1)
        self.branch3x3_reduce = BasicConv2d(128, 24, 1)
        self.branch3x3 = BasicConv2d(24, 32, 3, padding=1)
        self.branch3x3_reduce_2 = BasicConv2d(128, 24, 1)
        self.branch3x3_2 = BasicConv2d(24, 32, 3, padding=1)
        self.branch3x3_3 = BasicConv2d(32, 32, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch1x1_2(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        c = self.branch3x3(self.branch3x3_reduce(x))
        d = self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x)))
        return torch.cat([a, b, c, d], dim=1)


class ConvPool(nn.Module):
    """One half of RDCL: a CReLU conv, then a 3x3 max-pool of stride 2 (the conv is shared, not copied)."""

    def __init__(self, conv: CReLU) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)


class RDCL(nn.Module):
    """Rapidly Digested Convolutional Layers: shrink the image 32x in four cheap steps."""

    def __init__(self, conv1: CReLU, conv2: CReLU) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2

    def halves(self) -> tuple[ConvPool, ConvPool]:
        """(conv1 + pool, conv2 + pool): training may fine-tune the second while the first stays frozen,
        so even the reference design's split has a head block to train (``--train-head --split rdcl``)."""
        return ConvPool(self.conv1), ConvPool(self.conv2)

    def forward(self, x: Tensor) -> Tensor:
        first, second = self.halves()
        return second(first(x))


class FaceBoxes(nn.Module):
    """FaceBoxes detector; ``forward`` returns (loc [N,A,4], conf logits [N,A,2])."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = CReLU(3, 24, kernel_size=7, stride=4, padding=3)
        self.conv2 = CReLU(48, 64, kernel_size=5, stride=2, padding=2)
        self.inception1 = Inception()
        self.inception2 = Inception()
        self.inception3 = Inception()
        self.conv3_1 = BasicConv2d(128, 128, 1)
        self.conv3_2 = BasicConv2d(128, 256, 3, stride=2, padding=1)
        self.conv4_1 = BasicConv2d(256, 128, 1)
        self.conv4_2 = BasicConv2d(128, 256, 3, stride=2, padding=1)
        in_channels = (128, 256, 256)
        self.loc = nn.Sequential(
            *[nn.Conv2d(c, n * 4, 3, padding=1) for c, n in zip(in_channels, ANCHORS_PER_CELL, strict=True)]
        )
        self.conf = nn.Sequential(
            *[
                nn.Conv2d(c, n * self.num_classes, 3, padding=1)
                for c, n in zip(in_channels, ANCHORS_PER_CELL, strict=True)
            ]
        )

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The head-side stages in order; the name of each is the split point *after* it."""
        return [
            ("rdcl", RDCL(self.conv1, self.conv2)),
            ("inception1", self.inception1),
            ("inception2", self.inception2),
            ("inception3", self.inception3),
        ]

    def split_points(self) -> tuple[str, ...]:
        """Where :meth:`split` may cut, in data-flow order."""
        return SPLIT_POINTS

    def split(self, at: str = DEFAULT_SPLIT) -> tuple[FaceBoxesHead, FaceBoxesTail]:
        """Cut after stage ``at``; both halves share this model's parameters."""
        if at not in SPLIT_POINTS:
            raise SplitPointError(
                f"unknown split point {at!r} for faceboxes: choose one of {', '.join(SPLIT_POINTS)}"
            )
        stages = self.stages()
        cut = [name for name, _ in stages].index(at) + 1
        head = FaceBoxesHead([m for _, m in stages[:cut]])
        tail = FaceBoxesTail([m for _, m in stages[cut:]], self.multibox())
        return head, tail

    def multibox(self) -> MultiBox:
        """The layers after inception3 that turn features into per-anchor predictions."""
        return MultiBox(self.conv3_1, self.conv3_2, self.conv4_1, self.conv4_2, self.loc, self.conf)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for _, stage in self.stages():
            x = stage(x)
        return self.multibox()(x)


class MultiBox(nn.Module):
    """conv3/conv4 and the three loc/conf predictors: inception3 features -> (loc, conf logits)."""

    def __init__(
        self,
        conv3_1: nn.Module,
        conv3_2: nn.Module,
        conv4_1: nn.Module,
        conv4_2: nn.Module,
        loc: nn.Sequential,
        conf: nn.Sequential,
    ) -> None:
        super().__init__()
        self.conv3_1, self.conv3_2, self.conv4_1, self.conv4_2 = conv3_1, conv3_2, conv4_1, conv4_2
        self.loc, self.conf = loc, conf

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        x3 = self.conv3_2(self.conv3_1(x))
        x4 = self.conv4_2(self.conv4_1(x3))
        locs, confs = [], []
        for src, loc, conf in zip((x, x3, x4), self.loc, self.conf, strict=True):
            locs.append(loc(src).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(conf(src).permute(0, 2, 3, 1).reshape(n, -1, FaceBoxes.num_classes))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


class FaceBoxesHead(nn.Module):
    """The client half: image (N,3,H,W) -> activation (N,128,H/32,W/32)."""

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)


class FaceBoxesTail(nn.Module):
    """The server half: activation -> (loc [N,A,4], conf logits [N,A,2])."""

    def __init__(self, stages: list[nn.Module], multibox: MultiBox) -> None:
        super().__init__()
        # the server may read the noisy release through an adapter first (veil.models.adapter); none here
        self.adapter: nn.Module = nn.Identity()
        self.stages = nn.Sequential(*stages)
        self.multibox = multibox

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.multibox(self.stages(self.adapter(x)))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (excludes BatchNorm running statistics)."""
    return sum(p.numel() for p in model.parameters())
