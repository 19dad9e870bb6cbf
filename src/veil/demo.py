"""The main job: a real Triton server, the FDDB sample sent clean and through each shipped transform.

It mirrors the reference design end to end on one machine: the tail runs in Triton (the server in
the nvidia-pytriton wheel, on 127.0.0.1), the client runs preprocessing, the head and the noise, and
only the released tensor crosses. It prints the reference design's accuracy table and writes, per
image and transform, a picture: the clean boxes, the transform's boxes, what left the machine and what
the shipped reconstruction attacker rebuilds from that very tensor (``veil.demo_picture``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from veil.artifact import Transform, load_transform, release_digest
from veil.audit.attack import Attacker, reconstruct
from veil.demo_picture import Panels, save_picture
from veil.errors import VeilError
from veil.faceboxes.data import load_dataset
from veil.faceboxes.eval.runner import evaluate_draws
from veil.faceboxes.shipped import shipped_transforms
from veil.imageio import load_image


@dataclass
class DemoRow:
    alpha: float | None
    model: str
    average_ap: float
    pooled_ap: float
    pooled_std: float


def say(message: str) -> None:
    """What the demo is doing, before each long step (flushed: progress bars write to stderr)."""
    print(message, flush=True)


def shipped_attacker(tr: Transform) -> Attacker | None:
    """The attacker veil ships for this transform's exact release (by digest), else None."""
    from veil.assets import attacker_for
    from veil.audit.store import load_attacker

    path = attacker_for(release_digest(tr))
    return None if path is None else load_attacker(path)


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
    from veil.faceboxes.pipeline import transform_head, transform_tail
    from veil.faceboxes.registry import create_model, get_spec, split_model
    from veil.serve.export import ScoresTail
    from veil.serve.server import BASE_MODEL, ServerConfig, VeilServer, free_ports

    paths = transforms if transforms else sorted(shipped_transforms().values())
    if not paths:
        raise VeilError("no transforms to demonstrate: pass --transform DIR (train one with `veil train`)")
    say(f"Loading the weights ({weights}) and {len(paths)} transform(s)")
    loaded: list[Transform] = [load_transform(p, weights) for p in paths]
    data = load_dataset(dataset)
    faces = sum(len(item.boxes) for item in data.images)
    say(f"Data: {dataset} ({len(data.images)} images, {faces} faces)")
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
    say(f"Starting Triton on 127.0.0.1 with {len(tails)} models (its log: {log})")
    with VeilServer(tails, config) as server:
        print("Server endpoints:", *server.endpoints.lines(), sep="\n  ", flush=True)
        url = server.endpoints.http
        token = server.access_token
        clean_client = VeilClient(
            url, model=BASE_MODEL, head=base_head.eval(), allow_clean=True, access_token=token
        )
        say("Evaluating clean (no noise) through Triton")
        summary, clean_preds = evaluate_draws(data, clean_client.detect, 1, progress=progress, desc="clean")
        rows.append(DemoRow(None, BASE_MODEL, summary.mean.average_ap, summary.mean.pooled_ap, 0.0))
        clean_by_name = {p.name: p for p in clean_preds}
        clients = [clean_client]
        for tr, name in zip(loaded, names, strict=True):
            client = VeilClient(
                url, model=name, head=transform_head(weights, tr), noise=tr.noise, access_token=token
            )
            label = f"α = {tr.alpha:g}"
            say(f"Evaluating {label} ({tr.path.name if tr.path else name}), {draws} noise draw(s)")
            summary, _ = evaluate_draws(data, client.detect, draws=draws, progress=progress, desc=label)
            pooled = summary.pooled
            std = float(pooled.std(ddof=1)) if len(pooled) > 1 else 0.0
            rows.append(DemoRow(tr.alpha, name, summary.mean.average_ap, summary.mean.pooled_ap, std))
            clients.append(client)
            attacker = shipped_attacker(tr)
            rebuilt = (
                "with the shipped attacker's reconstructions" if attacker else "(no attacker ships for it)"
            )
            say(f"Drawing {label}'s pictures {rebuilt}")
            for item in data.images:
                image = load_image(item.path)
                noisy = client.detect([image])[0]  # one draw: its boxes, its tensor, its reconstruction
                assert client.last_sent is not None
                sent = torch.from_numpy(client.last_sent)  # exactly what went on the wire
                panels = Panels(
                    image=image,
                    clean=torch.from_numpy(clean_by_name[item.name].detections).float(),
                    noisy=noisy.detach().float().cpu(),
                    released=sent,
                    keep=tr.noise.keep,
                    alpha=tr.alpha,
                    reconstruction=None if attacker is None else reconstruct(sent, attacker)[0],
                )
                stem = item.name.replace("/", "_")
                save_picture(panels, out / f"{stem}_alpha{tr.alpha:g}.png")
        for name in tails:
            clients.append(VeilClient(url, model=name, allow_clean=True, access_token=token))
            model_stats = clients[-1].statistics().get("model_stats", [{}])[0]
            print(
                f"triton statistics: {name}: {model_stats.get('inference_count', '?')} inferences "
                f"in {model_stats.get('execution_count', '?')} executions"
            )
        for c in clients:  # idle keep-alive connections would hold up Triton's shutdown
            c.close()
        say("Stopping Triton")
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
