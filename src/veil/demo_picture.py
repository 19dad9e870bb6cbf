"""The demo's picture per image and transform: four titled panels, drawn with matplotlib.

[clean boxes | the transform's boxes | what left the machine | what the shipped attacker rebuilds from it]
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from veil.imageio import atomic_write_bytes, draw_detections

SHOWN_CHANNELS = 16  # a 4 x 4 mosaic of the released tensor's channels
STRONG = 0.5  # boxes drawn: score above this
SUPPRESSED_GREY = 0.6


@dataclass
class Panels:
    """What one picture shows; ``reconstruction`` is None when no attacker ships for this release."""

    image: Tensor  # uint8 [3, H, W]
    clean: Tensor  # [M, 5] detections of the clean model
    noisy: Tensor  # [M, 5] detections from the released tensor shown
    released: Tensor  # [1, C, h, w] what left the machine
    keep: Tensor  # bool, broadcastable to [C, h, w]: False where the transform sends a constant
    alpha: float
    reconstruction: Tensor | None = None  # uint8 [3, s, s]: the attacker's output for ``released``


def channel_mosaic(released: Tensor, keep: Tensor) -> tuple[np.ndarray, list[tuple[int, bool]]]:
    """16 channels spread over all C (so the suppressed share shows), RGB float [H, W, 3] in [0, 1].

    Kept channels are scaled between their 1st and 99th percentile (a few outliers would otherwise
    leave a dark tile); suppressed ones, a constant on the wire, are flat grey. Also returns
    (channel, suppressed) per tile, row-major.
    """
    import matplotlib

    act = released[0].detach().float().cpu()
    c, h, w = act.shape
    dropped = ~keep.expand(c, h, w).cpu().reshape(c, -1).any(dim=1)
    picks = torch.linspace(0, c - 1, min(SHOWN_CHANNELS, c)).round().long().tolist()
    side = int(np.ceil(np.sqrt(len(picks))))
    pad = 1
    mosaic = np.ones(((h + pad) * side - pad, (w + pad) * side - pad, 3))
    viridis = matplotlib.colormaps["viridis"]
    tiles = []
    for i, ch in enumerate(picks):
        r, col = divmod(i, side)
        y, x = r * (h + pad), col * (w + pad)
        if dropped[ch]:
            tile = np.full((h, w, 3), SUPPRESSED_GREY)
        else:
            v = act[ch].flatten()
            lo, hi = torch.quantile(v, 0.01), torch.quantile(v, 0.99)
            unit = ((act[ch] - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1).numpy()
            tile = viridis(unit)[..., :3]
        mosaic[y : y + h, x : x + w] = tile
        tiles.append((ch, bool(dropped[ch])))
    return mosaic, tiles


def _faces(dets: Tensor) -> str:
    n = int((dets[:, 4] > STRONG).sum()) if dets.numel() else 0
    return f"{n} face{'s' if n != 1 else ''} (score > {STRONG:g})"


def render(p: Panels) -> Figure:
    """The four-panel figure (titles name each panel; suppressed channels are grey with a cross)."""
    _, height, width = p.image.shape
    aspect = width / height
    fig = Figure(figsize=(3.4 * (3 * aspect + 1) + 0.4, 3.4 + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [aspect, aspect, 1, aspect]})
    clean = draw_detections(p.image, p.clean[p.clean[:, 4] > STRONG], color="lime")
    noisy = draw_detections(p.image, p.noisy[p.noisy[:, 4] > STRONG], color="red")
    axes[0].imshow(clean.permute(1, 2, 0).numpy())
    axes[0].set_title(f"clean\n{_faces(p.clean)}", fontsize=10)
    axes[1].imshow(noisy.permute(1, 2, 0).numpy())
    axes[1].set_title(f"α = {p.alpha:g}: detections\n{_faces(p.noisy)}", fontsize=10)

    mosaic, tiles = channel_mosaic(p.released, p.keep)
    axes[2].imshow(mosaic, interpolation="nearest")
    c, h, w = p.released.shape[1:]
    side = int(np.ceil(np.sqrt(len(tiles))))
    for i, (_ch, dropped) in enumerate(tiles):
        if dropped:  # a cross over each suppressed tile: it carries one constant, not a broken picture
            r, col = divmod(i, side)
            y0, x0 = r * (h + 1) - 0.5, col * (w + 1) - 0.5
            axes[2].plot([x0, x0 + w], [y0, y0 + h], color="white", lw=0.8)
            axes[2].plot([x0, x0 + w], [y0 + h, y0], color="white", lw=0.8)
    total = int((~p.keep.expand(c, h, w).reshape(c, -1).any(dim=1)).sum())
    axes[2].set_title(
        f"what left the machine\n{len(tiles)} of {c} channels;\ngrey ×: suppressed ({total} of {c})",
        fontsize=10,
    )
    if p.reconstruction is not None:
        rec = F.interpolate(p.reconstruction[None].float(), size=(height, width), mode="bilinear")[0]
        axes[3].imshow(rec.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
        axes[3].set_title("what the shipped attacker\nrebuilds from it\n(trained on LFW faces)", fontsize=10)
    else:
        axes[3].imshow(np.full((height, width, 3), 0.92))
        axes[3].text(
            width / 2,
            height / 2,
            "no attacker ships for this release:\nveil audit trains one",
            ha="center",
            va="center",
            fontsize=9,
        )
        axes[3].set_title("what an attacker\nrebuilds from it", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save_picture(p: Panels, path: Path) -> Figure:
    """Render and write the PNG atomically; returns the figure (tests read its titles)."""
    fig = render(p)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.08)  # titles never clipped
    atomic_write_bytes(path, buf.getvalue())
    return fig
