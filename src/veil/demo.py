"""The main job: a real Triton server, the FDDB sample sent clean and through each shipped transform.

It mirrors the reference design end to end on one machine: the tail runs in Triton (the server in
the nvidia-pytriton wheel, on 127.0.0.1), the client runs preprocessing, the head and the noise, and
only the released tensor crosses. It prints the reference design's accuracy table and writes, per
image, a picture with the clean boxes, the obfuscated boxes and what left the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from veil.artifact import Transform, load_transform, shipped_transforms
from veil.data import load_dataset
from veil.errors import VeilError
from veil.eval.runner import evaluate_draws
from veil.imageio import draw_detections, load_image, save_png


@dataclass
class DemoRow:
    alpha: float | None
    model: str
    average_ap: float
    pooled_ap: float
    pooled_std: float


def released_picture(released: Tensor, height: int) -> Tensor:
    """What left the machine, as a picture: 16 of its channels tiled, each min-max scaled (uint8 RGB)."""
    import matplotlib

    channels = released[0, :16].float()
    lo = channels.amin(dim=(1, 2), keepdim=True)
    hi = channels.amax(dim=(1, 2), keepdim=True)
    tiles = ((channels - lo) / (hi - lo).clamp_min(1e-6)).unsqueeze(1)
    grid = make_grid(tiles, nrow=4, padding=1, pad_value=1.0)[0]
    rgb = torch.from_numpy(matplotlib.colormaps["viridis"](grid.numpy())[..., :3]).permute(2, 0, 1)
    side = height
    rgb = F.interpolate(rgb[None].float(), size=(side, side), mode="nearest")[0]
    return (rgb * 255).round().to(torch.uint8)


def side_by_side(image: Tensor, clean: Tensor, noisy: Tensor, released: Tensor) -> Tensor:
    """[clean boxes | obfuscated boxes | released tensor], one uint8 picture."""
    strong_clean, strong_noisy = clean[clean[:, 4] > 0.5], noisy[noisy[:, 4] > 0.5]
    left = draw_detections(image, strong_clean, color="lime")
    middle = draw_detections(image, strong_noisy, color="red")
    right = released_picture(released, image.shape[1])
    return torch.cat([left, middle, right], dim=2)


def run_demo(
    weights: Path,
    dataset: Path,
    out: Path,
    transforms: list[Path] | None = None,
    draws: int = 2,
    progress: bool = True,
) -> list[DemoRow]:
    """Start Triton, evaluate clean and obfuscated through the client, write pictures, stop Triton."""
    from veil.client import VeilClient
    from veil.models import create_model, get_spec, split_model
    from veil.pipeline import transform_head, transform_tail
    from veil.serve.export import ScoresTail
    from veil.serve.server import BASE_MODEL, ServerConfig, VeilServer, free_ports

    paths = transforms if transforms else sorted(shipped_transforms().values())
    if not paths:
        raise VeilError("no transforms to demonstrate: pass --transform DIR (train one with `veil train`)")
    loaded: list[Transform] = [load_transform(p, weights) for p in paths]
    data = load_dataset(dataset)
    base_head, base_tail = split_model(
        create_model("faceboxes", weights), get_spec("faceboxes").default_split
    )
    tails = {BASE_MODEL: ScoresTail(base_tail.eval())}
    names = []
    for tr in loaded:
        name = f"face_detection_noisy_alpha{round(100 * tr.alpha):02d}"
        tails[name] = ScoresTail(transform_tail(weights, tr))
        names.append(name)
    http, grpc, metrics = free_ports()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "triton.log"  # Triton's own log, out of the way of the table
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=log.resolve())
    rows: list[DemoRow] = []
    with VeilServer(tails, config) as server:
        print("Server endpoints:", *server.endpoints.lines(), sep="\n  ")
        url = server.endpoints.http
        token = server.access_token
        clean_client = VeilClient(
            url, model=BASE_MODEL, head=base_head.eval(), allow_clean=True, access_token=token
        )
        summary, clean_preds = evaluate_draws(data, clean_client.detect, draws=1, progress=progress)
        rows.append(DemoRow(None, BASE_MODEL, summary.mean.average_ap, summary.mean.pooled_ap, 0.0))
        clean_by_name = {p.name: p for p in clean_preds}
        clients = [clean_client]
        for tr, name in zip(loaded, names, strict=True):
            client = VeilClient(
                url, model=name, head=transform_head(weights, tr), noise=tr.noise, access_token=token
            )
            summary, preds = evaluate_draws(data, client.detect, draws=draws, progress=progress)
            pooled = summary.pooled
            std = float(pooled.std(ddof=1)) if len(pooled) > 1 else 0.0
            rows.append(DemoRow(tr.alpha, name, summary.mean.average_ap, summary.mean.pooled_ap, std))
            clients.append(client)
            for item, pred in zip(data.images, preds, strict=True):
                image = load_image(item.path)
                sent, _ = client.release([image])
                picture = side_by_side(
                    image,
                    torch.from_numpy(clean_by_name[item.name].detections).float(),
                    torch.from_numpy(pred.detections).float(),
                    sent,
                )
                stem = item.name.replace("/", "_")
                save_png(picture, out / f"{stem}_alpha{tr.alpha:g}.png")
        for name in tails:
            clients.append(VeilClient(url, model=name, allow_clean=True, access_token=token))
            model_stats = clients[-1].statistics().get("model_stats", [{}])[0]
            print(
                f"triton statistics: {name}: {model_stats.get('inference_count', '?')} inferences "
                f"in {model_stats.get('execution_count', '?')} executions"
            )
        for c in clients:  # idle keep-alive connections would hold up Triton's shutdown
            c.close()
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """The reference design's accuracy comparison: obfuscation | ALPHA | AP (plus pooled AP, retention)."""
    clean = rows[0]
    lines = [
        f"{'obfuscation':<12}{'ALPHA':>7}{'AP (mean of folds)':>20}{'pooled AP':>20}{'retained':>10}",
    ]
    for r in rows:
        alpha = "n/a" if r.alpha is None else f"{r.alpha:g}"
        pooled = f"{r.pooled_ap:.4f}" + (f" ± {r.pooled_std:.4f}" if r.alpha is not None else "")
        retained = 100 * r.pooled_ap / clean.pooled_ap if clean.pooled_ap else float("nan")
        flag = "no" if r.alpha is None else "yes"
        lines.append(f"{flag:<12}{alpha:>7}{r.average_ap:>20.4f}{pooled:>20}{retained:>9.1f}%")
    return "\n".join(lines)
