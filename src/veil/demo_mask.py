"""``veil demo --task mask-compliance``: the whole confidential pipeline on annotated street photos.

A photo goes through FaceBoxes' private release (head + learned noise here; the tail in Triton finds the
faces and the boxes come back); the client cuts each face crop (:func:`veil.mask_compliance.data.face_crop`)
and sends the crops' private release to the mask classifier's tail on the same Triton server. Both tails
are served by one :class:`veil.serve.server.VeilServer` (``from_transform`` with both transform
directories), on 127.0.0.1. Only releases cross: every tensor sent is the client's ``last_sent``.

The clean path is the same pipeline with the original models run locally (no noise, no server). Each
photo is scored against its PASCAL VOC annotations: detections are matched to annotated faces (IoU >= 0.5,
greedy by score) and a matched face agrees when its predicted class is the annotated one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from veil.errors import DatasetError
from veil.faceboxes.data.labels import image_part
from veil.mask_compliance.data import CLASSES, MIN_SIDE, face_crop, image_name, read_voc, scene_images
from veil.mask_compliance.model import to_input

#: Detections kept as faces: FaceBoxes' score above this (the FaceBoxes demo's drawing threshold).
FACE_SCORE = 0.5
#: A detection is an annotated face when their IoU is at least this.
MATCH_IOU = 0.5
#: Default FaceBoxes alpha (the shipped transform of the default split at this alpha).
FACEBOXES_ALPHA = 0.12
SHORT = ("with mask", "without", "incorrect")


def say(message: str) -> None:
    """What the demo is doing, before each long step."""
    print(message, flush=True)


def default_dataset() -> Path:
    """``$VEIL_SHARED/data/mask-scenes``, else ``../shared/data/mask-scenes``."""
    shared = os.environ.get("VEIL_SHARED")
    return Path(shared) / "data" / "mask-scenes" if shared else Path("../shared/data/mask-scenes")


@dataclass
class Photo:
    """One annotated photo: its boxes [N, 4] and class indices [N] (faces of at least MIN_SIDE pixels)."""

    name: str
    path: Path
    boxes: Tensor
    labels: Tensor


@dataclass
class PathResult:
    """What one path (clean or private) found on one photo."""

    detections: Tensor  # [M, 5] faces kept (score > FACE_SCORE, side >= MIN_SIDE)
    classes: Tensor  # [M] predicted class per detection
    matched: int = 0  # annotated faces found
    agree: int = 0  # of those, predicted class == annotated class


@dataclass
class PhotoResult:
    photo: Photo
    clean: PathResult
    private: PathResult
    sent: list[np.ndarray] = field(default_factory=list)  # FaceBoxes' release, then the crops' release


def load_photos(root: Path, part: str = "test", max_images: int = 4) -> list[Photo]:
    """The first ``max_images`` annotated photos of ``part`` (file order), with their faces."""
    ann = root / "annotations"
    if not ann.is_dir():
        raise DatasetError(f"{root}: no mask-scenes annotations/ here: pass --dataset (the mask-scenes root)")
    images = scene_images(root)
    photos = []
    for xml in sorted(ann.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        filename, objects = read_voc(xml)
        path = images.get(filename)
        if path is None:
            continue
        name = image_name(root, path)
        if part != "all" and image_part(name) != part:
            continue
        kept = [(c, b) for c, b in objects if min(b[2] - b[0], b[3] - b[1]) >= MIN_SIDE]
        boxes = torch.tensor([b for _, b in kept], dtype=torch.float32).reshape(-1, 4)
        photos.append(Photo(name, path, boxes, torch.tensor([CLASSES.index(c) for c, _ in kept])))
        if len(photos) >= max_images:
            break
    if not photos:
        raise DatasetError(f"{root}: no annotated photos in the {part} half: pass --dataset (mask-scenes)")
    return photos


def faces_of(detections: Tensor) -> Tensor:
    """FaceBoxes' detections kept as faces: score above FACE_SCORE and both sides >= MIN_SIDE pixels."""
    d = detections.detach().float().cpu()
    if d.numel() == 0:
        return d.reshape(0, 5)
    side = torch.minimum(d[:, 2] - d[:, 0], d[:, 3] - d[:, 1])
    return d[(d[:, 4] > FACE_SCORE) & (side >= MIN_SIDE)]


def cut(image: Tensor, detections: Tensor) -> Tensor:
    """uint8 crops [M, 3, 64, 64] of the detections (the cut the classifier was trained on)."""
    if len(detections) == 0:
        return torch.zeros(0, 3, 64, 64, dtype=torch.uint8)
    return torch.stack([face_crop(image, box.tolist()) for box in detections[:, :4]])


def score(result: PathResult, photo: Photo) -> PathResult:
    """Match detections to annotated faces (IoU >= MATCH_IOU, greedy by score) and count agreements."""
    if len(result.detections) and len(photo.boxes):
        iou = box_iou(result.detections[:, :4], photo.boxes)
        taken: set[int] = set()
        for i in torch.argsort(result.detections[:, 4], descending=True).tolist():
            row = iou[i].clone()
            row[list(taken)] = -1
            j = int(row.argmax())
            if row[j] >= MATCH_IOU:
                taken.add(j)
                result.matched += 1
                result.agree += int(result.classes[i] == photo.labels[j])
    return result


def counts(classes: Tensor) -> list[int]:
    return [int((classes == k).sum()) for k in range(len(CLASSES))]


def photo_line(r: PhotoResult) -> str:
    """``name: annotated N faces: a with mask, b without, c incorrect | clean ... | private ...``."""

    def part(label: str, classes: Tensor, extra: str = "") -> str:
        a, b, c = counts(classes)
        return f"{label} {len(classes)} faces: {a} with mask, {b} without, {c} incorrect{extra}"

    def found(p: PathResult) -> str:
        return f" ({p.matched} annotated found, {p.agree} same class)"

    return (
        f"{r.photo.name}: {part('annotated', r.photo.labels)}"
        f" | {part('clean', r.clean.classes, found(r.clean))}"
        f" | {part('private', r.private.classes, found(r.private))}"
    )


def format_table(results: list[PhotoResult]) -> str:
    """Summary: faces found, counts per class, annotated faces found and class accuracy on them."""
    ann = torch.cat([r.photo.labels for r in results])
    head = f"{'path':<10}{'faces':>7}" + "".join(f"{s:>11}" for s in SHORT)
    lines = [head + f"{'found':>14}{'class acc.':>12}"]
    lines.append(f"{'annotated':<10}{len(ann):>7}" + "".join(f"{n:>11}" for n in counts(ann)))
    for label in ("clean", "private"):
        paths = [getattr(r, label) for r in results]
        cls = torch.cat([p.classes for p in paths])
        matched, agree = sum(p.matched for p in paths), sum(p.agree for p in paths)
        acc = f"{agree / matched:.3f}" if matched else "n/a"
        found = f"{matched}/{len(ann)}"
        lines.append(
            f"{label:<10}{len(cls):>7}" + "".join(f"{n:>11}" for n in counts(cls)) + f"{found:>14}{acc:>12}"
        )
    return "\n".join(lines)


def run_mask_demo(
    dataset: Path,
    out: Path,
    *,
    max_images: int = 4,
    part: str = "test",
    faceboxes_transform: Path | None = None,
    mask_transform: Path | None = None,
    protocol: str = "grpc",
) -> list[PhotoResult]:
    """Start one Triton serving both tails, run every photo clean (locally) and private, write pictures."""
    import veil
    from veil.assets import default_weights
    from veil.client import VeilClient
    from veil.demo_mask_picture import save_mask_picture
    from veil.faceboxes.generic import from_transform
    from veil.faceboxes.pipeline import load_pipeline
    from veil.faceboxes.registry import create_model
    from veil.faceboxes.shipped import shipped_transforms
    from veil.imageio import load_image
    from veil.mask_compliance.model import load_classifier
    from veil.mask_compliance.shipped import shipped_default
    from veil.serve.server import ServerConfig, VeilServer, free_ports

    photos = load_photos(dataset, part, max_images)
    weights = default_weights()
    fb_dir = faceboxes_transform or shipped_transforms()[FACEBOXES_ALPHA]
    mask_dir = mask_transform or shipped_default()
    if mask_dir is None:
        raise DatasetError("no mask-compliance transform ships with this veil: pass one")
    say(
        f"Photos: {len(photos)} of the {part} half of {dataset}; "
        f"FaceBoxes {fb_dir.name}; classifier {mask_dir.name}"
    )
    detector, classifier = create_model("faceboxes", weights).eval(), load_classifier().eval()
    pipe = load_pipeline(weights, fb_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[PhotoResult] = []
    with tempfile.TemporaryDirectory(prefix="veil-mask-demo-") as tmp:
        served_fb = Path(tmp) / "faceboxes"
        from_transform(fb_dir, weights).save(served_fb)  # FaceBoxes on the generic path: tail.pt + spec
        fb_q, mask_q = veil.load(served_fb, detector), veil.load(mask_dir, classifier)
        http, grpc, metrics = free_ports(3)
        log = (out / "triton.log").resolve()
        config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=log)
        say(f"Starting one Triton on 127.0.0.1 serving both tails (its log: {log})")
        with VeilServer.from_transform([served_fb, mask_dir], config).start() as server:
            say(f"serving {', '.join(server.served)}")
            url = server.endpoints.grpc if protocol == "grpc" else server.endpoints.http
            fb_client = VeilClient(url, protocol, transform=fb_q, timeout=120)
            mask_client = VeilClient(url, protocol, transform=mask_q, timeout=120)
            try:
                for photo in photos:
                    image = load_image(photo.path)
                    batch = pipe.preprocess([image])
                    with torch.inference_mode():
                        loc0, conf0 = detector(batch.tensor)
                        clean_det = faces_of(pipe.post(loc0, conf0, batch)[0])
                        clean_cls = classifier(to_input(cut(image, clean_det))).argmax(1)
                    loc, conf = fb_client.infer(batch.tensor)  # only FaceBoxes' release leaves
                    assert fb_client.last_sent is not None
                    sent = [fb_client.last_sent]
                    private_det = faces_of(pipe.post(loc, conf, batch)[0])
                    crops = cut(image, private_det)
                    if len(crops):
                        logits = mask_client.infer(to_input(crops))  # only the crops' release leaves
                        assert mask_client.last_sent is not None
                        sent.append(mask_client.last_sent)
                        private_cls = torch.as_tensor(logits).argmax(1)
                    else:
                        private_cls = torch.zeros(0, dtype=torch.int64)
                    r = PhotoResult(
                        photo,
                        score(PathResult(clean_det, clean_cls), photo),
                        score(PathResult(private_det, private_cls), photo),
                        sent,
                    )
                    results.append(r)
                    print(photo_line(r), flush=True)
                    stem = photo.name.replace("/", "_")
                    save_mask_picture(image, r, out / f"{stem}_mask.png", alphas=(fb_q.alpha, mask_q.alpha))
            finally:
                fb_client.close()
                mask_client.close()
            say("Stopping Triton")
    return results
