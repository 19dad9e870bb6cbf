"""``veil eval --model mask-compliance``: accuracy, balanced accuracy and per-class recall on face crops.

Clean: the classifier on the crops. With a transform (``--transform DIR`` or ``--alpha A``, a shipped
one): ``tail(noise(head(crop)))``, fresh noise per draw, metrics averaged over ``draws`` (default 5) with
their spread. With ``--server URL``: the same through Triton, the client sending only each crop's release
(``VeilClient(url, transform=q).infer``); a server needs a transform (the clean model is never served).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.errors import InputError
from veil.mask_compliance.data import CLASSES, PARTS, crops, load_faces
from veil.mask_compliance.metrics import confusion, scores
from veil.mask_compliance.model import to_input

DEFAULT_DRAWS = 5
BATCH = 128


def resolve_transform(transform: Path | None, alpha: float | None) -> Path | None:
    """``--transform`` as given, ``--alpha`` as the shipped transform at that alpha, else None (clean)."""
    from veil.mask_compliance.shipped import transform_for

    if transform is not None and alpha is not None:
        raise InputError("give --transform or --alpha (a shipped transform), not both")
    return transform if alpha is None else transform_for(alpha)


def check_server(server: str | None, transform: Path | None) -> None:
    """A server runs a transform's tail: refuse ``--server`` without a transform in one line."""
    if server is not None and transform is None:
        raise InputError(
            "--server needs --transform or --alpha: the server runs a transform's tail, and the client "
            "sends only the release (the clean model is never served)"
        )


def predict(fn: Any, x: Tensor, progress: bool = False, desc: str = "") -> np.ndarray:
    """Class indices of uint8 crops ``x`` under ``fn`` (normalised input -> logits), in batches."""
    out = []
    for i in tqdm(range(0, len(x), BATCH), desc=desc or "classify", disable=not progress):
        with torch.no_grad():
            logits = fn(to_input(x[i : i + BATCH]))
        out.append(torch.as_tensor(logits).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _summary(runs: list[dict[str, Any]], mats: list[np.ndarray]) -> dict[str, Any]:
    """Mean metrics over draws, plus their std and the per-draw values."""
    acc = np.array([r["accuracy"] for r in runs])
    bal = np.array([r["balanced_accuracy"] for r in runs])
    per = {c: float(np.mean([r["per_class"][c] for r in runs])) for c in runs[0]["per_class"]}
    out: dict[str, Any] = {
        "accuracy": float(acc.mean()),
        "balanced_accuracy": float(bal.mean()),
        "per_class": per,
        "support": runs[0]["support"],
        "draws": len(runs),
        "confusion": np.mean(mats, axis=0).round(2).tolist(),
    }
    if len(runs) > 1:
        out["accuracy_std"] = float(acc.std(ddof=1))
        out["balanced_accuracy_std"] = float(bal.std(ddof=1))
        out["balanced_accuracy_draws"] = [round(float(b), 4) for b in bal]
    return out


def evaluate_crops(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    transform: Path | None = None,
    server: str | None = None,
    draws: int | None = None,
    progress: bool = False,
    **client: Any,
) -> dict[str, Any]:
    """Metrics of ``model`` on uint8 crops ``x`` with labels ``y`` (clean, a transform, or a server)."""
    check_server(server, transform)
    if len(y) == 0:
        raise InputError("no face crops to evaluate (empty part?)")
    labels = y.numpy()
    if transform is None:
        m = confusion(labels, predict(model.eval(), x, progress, "clean"))
        return scores(m) | {"draws": 1, "confusion": m.tolist(), "transform": None}
    import veil

    q = veil.load(transform, model)
    fn: Any = q.eval()
    remote = None
    if server is not None:
        from veil.client import VeilClient

        remote = VeilClient(server, transform=q, **{k: v for k, v in client.items() if v is not None})
        fn = remote.infer
    n = int(draws or DEFAULT_DRAWS)
    if n < 1:
        raise InputError(f"--draws must be >= 1, got {n}")
    runs, mats = [], []
    try:
        for d in range(n):
            m = confusion(labels, predict(fn, x, progress, f"draw {d + 1}/{n}"))
            runs.append(scores(m))
            mats.append(m)
    finally:
        if remote is not None:
            remote.close()
    return _summary(runs, mats) | {"transform": str(transform), "alpha": float(q.alpha), "split": q.split}


def evaluate(
    model: nn.Module,
    *,
    dataset: Path | None = None,
    part: str = "test",
    transform: Path | None = None,
    alpha: float | None = None,
    server: str | None = None,
    draws: int | None = None,
    progress: bool = True,
    max_faces: int | None = None,
    **client: Any,
) -> dict[str, Any]:
    """What ``veil eval --model mask-compliance`` calls (see :class:`veil.models.public.ModelEntry`)."""
    if dataset is None:
        raise InputError(
            "veil eval --model mask-compliance needs --dataset: the mask-scenes root "
            "(annotations/*.xml + originalPics/), e.g. ../shared/data/mask-scenes"
        )
    if part not in PARTS:
        raise InputError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    path = resolve_transform(transform, alpha)  # bad --alpha / --server refused before the crops are cut
    check_server(server, path)
    faces = load_faces(dataset, part)[:max_faces]
    x, y = crops(faces, progress=progress)
    out = evaluate_crops(model, x, y, transform=path, server=server, draws=draws, progress=progress, **client)
    return {"faces": len(faces), "part": part, **out, "classes": list(CLASSES)}
