"""Run a labeled dataset through any detector, score it, shard it, merge shards.

A run produces :class:`ImagePrediction` records; every summary (per-fold AP, pooled AP, FDDB ROC) is
computed from records alone, so a run split into shards and merged later gives exactly the numbers of
an unsharded run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor
from tqdm import tqdm

from veil.errors import VeilError
from veil.faceboxes.data.labels import LabeledDataset, LabeledImage, group_sort_key
from veil.faceboxes.eval.ap import average_precision
from veil.faceboxes.eval.fddb_roc import fddb_roc
from veil.faceboxes.eval.report import EvalResult, fold_mean, write_json_atomic
from veil.imageio import load_image

#: Anything that turns decoded images into per-image [M, 5] detections.
DetectFn = Callable[[Sequence[Tensor]], list[Tensor]]

PART_FORMAT = "veil-eval-part/1"


@dataclass(frozen=True, eq=False)
class ImagePrediction:
    """One image's detections next to its ground truth; ``index`` is its place in the dataset."""

    name: str
    group: str
    index: int
    detections: np.ndarray  # [M, 5] x1, y1, x2, y2, score
    boxes: np.ndarray  # [N, 4]
    ellipses: np.ndarray | None = None
    ignore: np.ndarray | None = None

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "group": self.group,
            "index": self.index,
            "detections": self.detections.tolist(),
            "boxes": self.boxes.tolist(),
        }
        if self.ellipses is not None:
            out["ellipses"] = self.ellipses.tolist()
        if self.ignore is not None:
            out["ignore"] = self.ignore.tolist()
        return out

    @classmethod
    def from_json(cls, d: dict) -> ImagePrediction:
        def arr(key: str, cols: int) -> np.ndarray | None:
            return None if key not in d else np.asarray(d[key], dtype=np.float64).reshape(-1, cols)

        ignore = None if "ignore" not in d else np.asarray(d["ignore"], dtype=bool)
        dets, boxes = arr("detections", 5), arr("boxes", 4)
        assert dets is not None and boxes is not None
        return cls(d["name"], str(d["group"]), int(d["index"]), dets, boxes, arr("ellipses", 5), ignore)


def _batches(images: Sequence[LabeledImage], size: int) -> Iterator[list[LabeledImage]]:
    for start in range(0, len(images), size):
        yield list(images[start : start + size])


def predict(
    dataset: LabeledDataset,
    detect: DetectFn,
    batch_size: int = 1,
    progress: bool = True,
    desc: str | None = None,
    use_ignore: bool = False,
) -> list[ImagePrediction]:
    """Detect faces on every image; decoding of the next batch overlaps with inference.

    ``use_ignore`` keeps WIDER FACE's "invalid" flags (those faces then count neither way); by default
    every annotated box counts, as in the reference design's evaluation.
    """
    index = {id(img): i for i, img in enumerate(dataset.images)}
    batches = list(_batches(dataset.images, max(1, batch_size)))
    out: list[ImagePrediction] = []
    bar = tqdm(total=len(dataset.images), desc=desc, disable=not progress, unit="img")
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoded = pool.map(lambda b: [load_image(img.path) for img in b], batches)
        for batch, pixels in zip(batches, decoded, strict=True):
            for img, dets in zip(batch, detect(pixels), strict=True):
                out.append(
                    ImagePrediction(
                        name=img.name,
                        group=img.group,
                        index=index[id(img)],
                        detections=dets.detach().cpu().double().numpy().reshape(-1, 5),
                        boxes=np.asarray(img.boxes),
                        ellipses=None if img.ellipses is None else np.asarray(img.ellipses),
                        ignore=None if img.ignore is None or not use_ignore else np.asarray(img.ignore),
                    )
                )
            bar.update(len(batch))
    bar.close()
    return out


def pooled_ap(preds: Sequence[ImagePrediction]) -> float:
    """AP over all images' detections together (IoU 0.5), honouring WIDER's ignore flags if kept."""
    ignore = None if all(p.ignore is None for p in preds) else [p.ignore for p in preds]
    return average_precision([p.detections for p in preds], [p.boxes for p in preds], 0.5, ignore)


def summarize(preds: Sequence[ImagePrediction], seconds: float = 0.0) -> EvalResult:
    """Per-group AP (the reference design's "Val AP"), their mean, pooled AP and the FDDB ROC."""
    if not preds:
        raise VeilError("no predictions to summarize: the dataset (or shard) is empty")
    preds = sorted(preds, key=lambda p: (group_sort_key(p.group), p.index))
    groups: dict[str, list[ImagePrediction]] = {}
    for p in preds:
        groups.setdefault(p.group, []).append(p)
    folds = {g: pooled_ap(ps) for g, ps in groups.items()}
    average = fold_mean(folds)
    roc: dict = {}
    if all(p.ellipses is not None for p in preds):
        roc = fddb_roc([p.detections for p in preds], [p.ellipses for p in preds]).to_dict()  # type: ignore[misc]
    return EvalResult(
        folds=folds,
        average_ap=average,
        map=average,
        pooled_ap=pooled_ap(preds),
        roc=roc,
        images=len(preds),
        faces=int(sum(p.boxes.shape[0] for p in preds)),
        seconds=seconds,
    )


def evaluate(
    dataset: LabeledDataset,
    detect: DetectFn,
    batch_size: int = 1,
    progress: bool = True,
    use_ignore: bool = False,
    desc: str | None = None,
) -> tuple[EvalResult, list[ImagePrediction]]:
    """:func:`predict` then :func:`summarize`, timed; ``desc`` labels the progress bar."""
    start = time.perf_counter()
    preds = predict(
        dataset, detect, batch_size=batch_size, progress=progress, desc=desc, use_ignore=use_ignore
    )
    return summarize(preds, seconds=time.perf_counter() - start), preds


def write_part(path: str | Path, preds: Sequence[ImagePrediction], result: EvalResult, meta: dict) -> None:
    """A shard's result with its raw predictions, so shards can be merged exactly."""
    data = result.to_json()
    data.update({"format": PART_FORMAT, "meta": meta, "predictions": [p.to_json() for p in preds]})
    write_json_atomic(Path(path), data)


def read_parts(paths: Sequence[str | Path]) -> tuple[list[ImagePrediction], float]:
    """Predictions and summed seconds from part files; refuses overlapping or foreign files."""
    preds: list[ImagePrediction] = []
    seconds = 0.0
    seen: dict[str, str] = {}
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VeilError(f"part file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise VeilError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); was it cut short?"
            ) from None
        if not isinstance(data, dict) or data.get("format") != PART_FORMAT:
            raise VeilError(f"{path}: not a veil eval part (write parts with `veil eval --json PART`)")
        for d in data["predictions"]:
            key = f"{d['group']}/{d['name']}"
            if key in seen:
                raise VeilError(f"{path}: image {d['name']} also in {seen[key]}: shards overlap")
            seen[key] = str(path)
            preds.append(ImagePrediction.from_json(d))
        seconds += float(data.get("seconds", 0.0))
    return preds, seconds


@dataclass
class DrawSummary:
    """AP over several noise draws: the mean result plus the spread a user should expect."""

    mean: EvalResult
    per_draw: list[EvalResult]

    @property
    def pooled(self) -> np.ndarray:
        return np.array([r.pooled_ap for r in self.per_draw])

    def to_json(self) -> dict:
        data = self.mean.to_json()
        pooled = self.pooled
        data["draws"] = {
            "count": len(self.per_draw),
            "pooled_ap": pooled.tolist(),
            "pooled_ap_std": float(pooled.std(ddof=1)) if len(pooled) > 1 else 0.0,
            "average_ap": [r.average_ap for r in self.per_draw],
        }
        return data


def evaluate_draws(
    dataset: LabeledDataset,
    detect: DetectFn,
    draws: int = 1,
    batch_size: int = 1,
    progress: bool = True,
    use_ignore: bool = False,
    desc: str | None = None,
) -> tuple[DrawSummary, list[ImagePrediction]]:
    """Run ``draws`` times (fresh noise each time) and average fold APs, pooled AP and ROC TPR."""
    runs = []
    first: list[ImagePrediction] = []
    for d in range(max(1, draws)):
        label = f"{desc}, draw {d + 1}/{draws}" if desc and draws > 1 else desc
        result, preds = evaluate(dataset, detect, batch_size, progress, use_ignore, label)
        runs.append(result)
        first = first or preds
    folds = {g: float(np.mean([r.folds[g] for r in runs])) for g in runs[0].folds}
    average = fold_mean(folds)
    roc = dict(runs[0].roc)
    if roc:
        roc["tpr_at_1000"] = {
            k: float(np.mean([r.roc["tpr_at_1000"][k] for r in runs])) for k in roc["tpr_at_1000"]
        }
    mean = EvalResult(
        folds=folds,
        average_ap=average,
        map=average,
        pooled_ap=float(np.mean([r.pooled_ap for r in runs])),
        roc=roc,
        images=runs[0].images,
        faces=runs[0].faces,
        seconds=float(sum(r.seconds for r in runs)),
    )
    return DrawSummary(mean, runs), first
