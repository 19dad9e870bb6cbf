"""The mask-scenes face crops: PASCAL VOC boxes -> square crops at the classifier's input size.

``<root>/annotations/<stem>.xml`` (PASCAL VOC: ``with_mask``, ``without_mask``, ``mask_weared_incorrect``)
names ``<stem>.jpg``; the picture is found under ``<root>/originalPics/`` (FDDB layout:
``originalPics/scenes/<stem>.jpg``). An image's *name* is its path under ``originalPics`` without ``.jpg``
(``scenes/maksssksksss37``), the FDDB name FaceBoxes' transforms were split by: the train/test halves
are :func:`veil.faceboxes.data.labels.image_part` of that name, the same halves everywhere.

A crop: boxes whose shorter side is under ``MIN_SIDE`` pixels are dropped; the square of side
``(1 + 2 * MARGIN) * max(w, h)`` centred on the box is cut (outside the picture: edge pixels repeated)
and resized (bilinear, anti-aliased) to ``INPUT_SIZE``. :func:`face_crop` is the one cut everything uses
(training, evaluation, the LFW crops of the audit, the demo).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from veil.errors import DatasetError
from veil.faceboxes.data.labels import image_part
from veil.imageio import load_image

#: The classes, in the order of the classifier's outputs.
CLASSES: tuple[str, ...] = ("with_mask", "without_mask", "mask_weared_incorrect")
#: Boxes with a shorter side below this many pixels are not classified (too few pixels to tell).
MIN_SIDE = 12
#: Context around the box on each side, as a share of its longer side.
MARGIN = 0.1
#: The classifier's input: square RGB crops of this side.
INPUT_SIZE = 64
PARTS = ("all", "train", "test")


@dataclass(frozen=True)
class Face:
    """One annotated face: its image, box (x1, y1, x2, y2 in pixels) and class index."""

    name: str  # the FDDB-style image name (split key)
    path: Path
    box: tuple[float, float, float, float]
    label: int


def read_voc(path: Path) -> tuple[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """(filename, [(class, box), ...]) of one PASCAL VOC file; unknown classes refused in one line."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable PASCAL VOC file ({exc})") from None
    filename = (root.findtext("filename") or f"{path.stem}.jpg").strip()
    objects = []
    for obj in root.iter("object"):
        cls = (obj.findtext("name") or "").strip()
        if cls not in CLASSES:
            raise DatasetError(f"{path}: class {cls!r} is not one of {', '.join(CLASSES)}")
        bb = obj.find("bndbox")
        try:
            box = tuple(float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            raise DatasetError(f"{path}: an object of class {cls} has no numeric bndbox") from None
        objects.append((cls, (box[0], box[1], box[2], box[3])))
    return filename, objects


def scene_images(root: Path) -> dict[str, Path]:
    """``filename -> path`` for every picture under ``root/originalPics`` (or ``root/images``)."""
    for sub in ("originalPics", "images"):
        if (root / sub).is_dir():
            return {
                p.name: p for p in sorted((root / sub).rglob("*")) if p.suffix.lower() in (".jpg", ".png")
            }
    raise DatasetError(f"{root}: no originalPics/ (or images/) folder: pass the mask-scenes root")


def image_name(root: Path, path: Path) -> str:
    """The FDDB-style name: the path under originalPics (or images) without its suffix."""
    for sub in ("originalPics", "images"):
        if (root / sub) in path.parents:
            return path.relative_to(root / sub).with_suffix("").as_posix()
    return path.stem


def load_faces(root: str | Path, part: str = "all", min_side: int = MIN_SIDE) -> list[Face]:
    """Every face of ``part`` whose shorter side is at least ``min_side`` pixels, in file order."""
    root = Path(root)
    if part not in PARTS:
        raise DatasetError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    ann = root / "annotations"
    files = sorted(ann.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)) if ann.is_dir() else []
    if not files:
        raise DatasetError(
            f"{root}: no annotations/*.xml: pass the mask-scenes root (annotations/ + originalPics/)"
        )
    images = scene_images(root)
    faces = []
    for xml in files:
        filename, objects = read_voc(xml)
        path = images.get(filename)
        if path is None:
            raise DatasetError(f"{xml}: its picture {filename} is not under {root}/originalPics")
        name = image_name(root, path)
        if part != "all" and image_part(name) != part:
            continue
        for cls, (x1, y1, x2, y2) in objects:
            if min(x2 - x1, y2 - y1) >= min_side:
                faces.append(Face(name, path, (x1, y1, x2, y2), CLASSES.index(cls)))
    return faces


def face_crop(image: Tensor, box: Sequence[float], size: int = INPUT_SIZE, margin: float = MARGIN) -> Tensor:
    """uint8 [3, size, size]: the square around ``box`` (+ margin) of a uint8 [3, H, W] image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = image.shape[1:]
    left, top = round(cx - side / 2), round(cy - side / 2)
    s = max(1, round(side))
    pad = (max(0, -left), max(0, left + s - w), max(0, -top), max(0, top + s - h))
    img = image.unsqueeze(0).float()
    if any(pad):
        img = F.pad(img, pad, mode="replicate")
    top, left = top + pad[2], left + pad[0]
    crop = img[:, :, top : top + s, left : left + s]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def crops(faces: Sequence[Face], size: int = INPUT_SIZE, progress: bool = False) -> tuple[Tensor, Tensor]:
    """(uint8 [N, 3, size, size], int64 labels [N]) of ``faces`` (each picture decoded once)."""
    out: list[Tensor] = []
    cache: tuple[Path, Tensor] | None = None
    for face in tqdm(faces, desc="face crops", disable=not progress):
        if cache is None or cache[0] != face.path:
            cache = (face.path, load_image(face.path))
        out.append(face_crop(cache[1], face.box, size))
    x = torch.stack(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return x, torch.tensor([f.label for f in faces], dtype=torch.int64)


def centre_crop(image: Tensor, share: float, size: int = INPUT_SIZE) -> Tensor:
    """uint8 [3, size, size]: the centred square of ``share`` of the shorter side (an LFW portrait's face)."""
    h, w = image.shape[1:]
    side = share * min(h, w)
    return face_crop(
        image, ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2), size, margin=0.0
    )
