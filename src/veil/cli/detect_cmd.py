"""``veil detect``: boxes on images, as PNG pictures and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from veil.cli.checks import FloatOpt, check_writable
from veil.cli.common import (
    CaCertOpt,
    ExpectReleaseOpt,
    ModelOpt,
    ResizeOpt,
    SizeOpt,
    ThreadsOpt,
    TilesOpt,
    WeightsOpt,
    parse_size,
    remote_detector,
    resolve_model_option,
    set_threads,
)
from veil.cli.keygen_cmd import StickyKeyOpt, read_sticky_key


def detect(
    images: list[Path] = typer.Argument(..., help="Image files.", show_default=False),
    model: str = ModelOpt,
    weights: Path | None = WeightsOpt,
    out: Path = typer.Option(Path("detections"), "--out", "-o", help="Output folder."),
    size: int | None = SizeOpt,
    resize: float | None = ResizeOpt,
    threshold: float = FloatOpt(0.5, help="Score threshold for reported boxes.", low=0, high=1),
    threads: int | None = ThreadsOpt,
    transform: Path | None = typer.Option(
        None, "--transform", "-t", help="Transform directory (adds noise)."
    ),
    server: str | None = typer.Option(None, help="Triton URL: the tail runs there, head and noise here."),
    allow_clean: bool = typer.Option(False, help="With --server and no transform: send clean activations."),
    expect_release: str | None = ExpectReleaseOpt,
    ca_cert: Path | None = CaCertOpt,
    tiles: int = TilesOpt,
    sticky_key: Path | None = StickyKeyOpt,
) -> None:
    """Detect faces; writes <name>.png (boxes drawn) and <name>.json per image."""
    from veil.faceboxes.detect import PostProcess
    from veil.faceboxes.pipeline import load_pipeline
    from veil.faceboxes.tiles import TileGrid, tiled
    from veil.imageio import (
        atomic_write_bytes,
        draw_detections,
        image_size,
        load_image,
        save_png,
        target_size,
    )
    from veil.serve.validate import INPUT_SIZE

    check_writable(out, "--out")
    key = read_sticky_key(sticky_key, server)
    fixed, factor = parse_size(size, resize)
    w = resolve_model_option(model, weights).require_faceboxes("detect")
    for path in images:  # every file's header and input size first: a bad one fails before any output
        height, width = image_size(path)
        if fixed is None:
            target_size(height, width, None, factor)
    set_threads(threads)
    grid = TileGrid(tiles=tiles)
    # tiles paint over the frame's large faces from hide_score up, whatever the reported threshold
    seen = threshold if tiles == 1 or grid.hide_score is None else min(threshold, grid.hide_score)
    if server is not None:
        detect = remote_detector(
            server,
            w,
            transform,
            allow_clean=allow_clean,
            threshold=seen,
            expect_release=expect_release,
            ca_cert=ca_cert,
            sticky_key=key,
        )
        detect = tiled(detect, grid, INPUT_SIZE)
    else:
        det = load_pipeline(
            w,
            transform,
            size=fixed,
            resize=factor,
            post=PostProcess(threshold=seen),
        )
        detect = tiled(det.detect, grid, det.size)
    for path in images:
        img = load_image(path)
        dets = detect([img])[0]
        dets = dets[dets[:, 4] >= threshold]
        save_png(draw_detections(img, dets), out / f"{path.stem}.png")
        record = {
            "image": str(path),
            "width": int(img.shape[2]),
            "height": int(img.shape[1]),
            "boxes": [[round(v, 2) for v in row[:4]] + [round(row[4], 4)] for row in dets.tolist()],
        }
        atomic_write_bytes(out / f"{path.stem}.json", json.dumps(record, indent=1).encode())
        typer.echo(f"{path}: {len(dets)} faces -> {out / (path.stem + '.png')}")
