"""``veil eval --model breast-cancer-mlp``: accuracy, balanced accuracy and per-class recall.

Rows: the bundled data's ``--part`` (``test``: the 171 rows neither the model, the transforms nor the
attacker trained on; ``train``; ``all``), or ``--dataset FILE.csv`` (a header naming the 30 sklearn feature
columns and ``target``; all its rows). Clean (no transform), or with a transform (``--transform DIR`` or the
shipped one at ``--alpha``): the head and the noise run here, the tail here or on Triton (``--server``:
:class:`veil.client.VeilClient` sends only the release). With a transform every metric is the mean over
``draws`` noise draws (default 5), with its standard deviation and minimum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from veil.errors import InputError
from veil.tabular.data import Rows, class_names, read_csv, rows

DEFAULT_DRAWS = 5


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """accuracy, balanced accuracy (mean per-class recall) and each class's recall."""
    recall = {}
    for label, name in enumerate(class_names()):
        mask = y == label
        recall[name] = float((pred[mask] == label).mean()) if mask.any() else float("nan")
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.nanmean(list(recall.values()))),
        "per_class": recall,
    }


def _rows(dataset: Path | None, part: str) -> Rows:
    if dataset is None:
        return rows(part)
    if part not in ("all", "test") or dataset.suffix.lower() != ".csv":
        raise InputError(
            f"--dataset {dataset}: breast-cancer-mlp reads a .csv (all its rows, no --part {part}); leave "
            "--dataset out for sklearn's bundled rows and their train/test split"
        )
    return read_csv(dataset)


def _predictor(
    model: nn.Module, transform: Path | None, server: str | None, client: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """(x -> logits, description) for the clean model, a local transform, or a transform on Triton."""
    if transform is None:
        if server is not None:
            raise InputError(
                "--server sends a release: pass --alpha A or --transform DIR (clean never leaves)"
            )
        return model, {"transform": None}
    import veil

    q = veil.load(transform, model)
    info = {
        "transform": str(transform),
        "alpha": float(q.alpha),
        "split": q.split,
        "mean_sigma": float(q.noise.mean_sigma()),
    }
    if server is None:
        return (lambda x: q.tail(q.release(x))), info
    from veil.client import VeilClient

    remote = VeilClient(server, transform=q, **{k: v for k, v in client.items() if v is not None})
    info["server"] = server
    return remote.infer, info


def evaluate(
    model: nn.Module,
    *,
    dataset: Path | None = None,
    part: str = "test",
    transform: Path | None = None,
    alpha: float | None = None,
    server: str | None = None,
    draws: int = 0,
    progress: bool = True,
    **client: Any,
) -> dict[str, Any]:
    """The metrics dict ``veil eval`` prints (``client``: ``expect_release``, ``ca_cert`` for VeilClient)."""
    from veil.tabular.shipped import transform_for

    if transform is not None and alpha is not None:
        raise InputError("give --transform or --alpha (a shipped transform), not both")
    if alpha is not None:
        transform = transform_for(alpha)
    data = _rows(Path(dataset) if dataset is not None else None, part)
    predict, info = _predictor(model.eval(), transform, server, client)
    n = 1 if transform is None else (draws or DEFAULT_DRAWS)
    x = torch.from_numpy(data.x)
    runs = []
    for _ in tqdm(range(n), desc="breast-cancer eval (draws)", disable=not progress or n == 1):
        with torch.no_grad():
            logits = predict(x)
        runs.append(metrics(torch.as_tensor(logits).argmax(1).numpy(), data.y))
    out: dict[str, Any] = {
        "accuracy": float(np.mean([r["accuracy"] for r in runs])),
        "balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in runs])),
        "per_class": {c: float(np.mean([r["per_class"][c] for r in runs])) for c in class_names()},
    }
    if n > 1:
        acc = np.array([r["accuracy"] for r in runs])
        out |= {"accuracy_std": float(acc.std(ddof=1)), "accuracy_min": float(acc.min())}
        bal = np.array([r["balanced_accuracy"] for r in runs])
        out["balanced_accuracy_std"] = float(bal.std(ddof=1))
    out |= {"rows": len(data.y), "part": data.name, "draws": n, "model": "breast-cancer-mlp"} | info
    out["draw_accuracy"] = [r["accuracy"] for r in runs]
    return out
