"""``veil demo --task breast-cancer-mlp``: the breast-cancer test rows through one real Triton.

Each test row (sklearn's bundled WDBC data, the task's fixed split: 171 rows) goes through the default
shipped transform (split ``act1``, alpha 0.6): the first layer and the learned noise run here, only the
64-number release is sent (``VeilClient.last_sent``), the tail on Triton answers with the 2 logits. Triton
serves the transform's tail (:meth:`veil.serve.server.VeilServer.from_transform`) on 127.0.0.1, free ports.

The clean path is the original model run locally. The demo prints a few rows (true, clean, private class),
a table clean vs private (accuracy, balanced accuracy, per-class recall) and writes one picture: per-class
recall clean vs private, and the first rows' release as a heatmap (what left the machine). The attacker's
numbers (which column it recovers best) are printed only where the transform directory ships an
``audit.json`` (``{"r2_per_feature": {column: R^2}}``); the shipped transforms carry none, so that line
is skipped.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.errors import DatasetError

#: The picture the demo writes in its output folder.
PICTURE = "breast_cancer_demo.png"
#: Rows printed one per line, and rows shown in the release heatmap.
SHOWN_ROWS = 5
HEATMAP_ROWS = 12


def say(message: str) -> None:
    """What the demo is doing, before each long step."""
    print(message, flush=True)


@dataclass
class TabularResult:
    """Everything one demo run produced (test rows, both paths' predictions, what was sent)."""

    y: np.ndarray  # (N,) true labels
    clean: np.ndarray  # (N,) clean predictions (local model)
    private: np.ndarray  # (N,) predictions from Triton's tail on the releases
    sent: np.ndarray  # (N, 64) every release that left, in row order
    classes: list[str]
    transform: Path
    alpha: float
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "clean" / "private" -> metrics
    best_attack: tuple[str, float] | None = None  # (column, R^2) where an audit ships
    picture: Path | None = None


def best_recovered(transform: Path) -> tuple[str, float] | None:
    """(column, R^2) the attacker recovers best, from ``transform/audit.json`` if it ships one."""
    path = Path(transform) / "audit.json"
    if not path.is_file():
        return None
    try:
        r2 = json.loads(path.read_text()).get("r2_per_feature") or {}
        name = max(r2, key=lambda k: float(r2[k]))
    except (ValueError, TypeError, AttributeError):
        return None
    return str(name), float(r2[name])


def row_lines(r: TabularResult, count: int = SHOWN_ROWS) -> list[str]:
    """``row i: true benign, clean benign, private benign`` for the first ``count`` rows."""
    c = r.classes
    return [
        f"row {i}: true {c[r.y[i]]}, clean {c[r.clean[i]]}, private {c[r.private[i]]}"
        for i in range(min(count, len(r.y)))
    ]


def format_table(r: TabularResult) -> str:
    """Clean vs private: accuracy, balanced accuracy, recall per class."""
    head = f"{'path':<10}{'accuracy':>10}{'balanced':>10}" + "".join(
        f"{'recall ' + c:>18}" for c in r.classes
    )
    lines = [head]
    for label in ("clean", "private"):
        m = r.metrics[label]
        lines.append(
            f"{label:<10}{m['accuracy']:>10.4f}{m['balanced_accuracy']:>10.4f}"
            + "".join(f"{m['per_class'][c]:>18.4f}" for c in r.classes)
        )
    n_same = int((r.clean == r.private).sum())
    lines.append(
        f"({len(r.y)} test rows; private == clean on {n_same}; alpha {r.alpha:g}, {r.transform.name})"
    )
    return "\n".join(lines)


def save_picture(r: TabularResult, path: Path) -> Path:
    """Per-class recall clean vs private (bars) and the first rows' release as a heatmap."""
    from matplotlib.figure import Figure

    from veil.imageio import atomic_write_bytes

    fig = Figure(figsize=(12, 4.6), dpi=100, layout="constrained")
    bars, heat = fig.subplots(1, 2, width_ratios=[1, 1.6])
    names = [*r.classes, "balanced"]
    xs = np.arange(len(names))
    for k, (label, colour) in enumerate((("clean", "tab:blue"), ("private", "tab:orange"))):
        m = r.metrics[label]
        values = [m["per_class"][c] for c in r.classes] + [m["balanced_accuracy"]]
        bars.bar(
            xs + (k - 0.5) * 0.38, values, 0.38, label=f"{label} (accuracy {m['accuracy']:.3f})", color=colour
        )
    bars.set_xticks(xs, [f"recall {c}" if c in r.classes else "balanced acc." for c in names])
    bars.set_ylim(0.5, 1.15)
    bars.set_yticks(np.arange(0.5, 1.01, 0.1))
    bars.set_ylabel("recall on the test rows")
    bars.set_title("per-class recall: clean vs private")
    bars.legend(loc="upper center", ncols=2, fontsize="small")
    shown = r.sent[:HEATMAP_ROWS]
    image = heat.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    heat.set_yticks(range(len(shown)), [f"row {i}" for i in range(len(shown))])
    heat.set_xlabel(f"released unit (of {r.sent.shape[1]}, split act1)")
    heat.set_title("what left the machine: the first rows' release")
    fig.suptitle(
        f"veil demo, breast-cancer-mlp: {len(r.y)} test rows through Triton, transform {r.transform.name} "
        "(the 30 raw columns never left)"
    )
    fig.colorbar(image, ax=heat, label="value sent")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def run_tabular_demo(
    out: Path,
    *,
    transform: Path | None = None,
    protocol: str = "grpc",
) -> TabularResult:
    """Start one Triton serving the transform's tail, send every test row's release, print, picture."""
    import veil
    from veil.client import VeilClient
    from veil.serve.server import ServerConfig, VeilServer, free_ports
    from veil.tabular.data import class_names, rows
    from veil.tabular.evaluate import metrics
    from veil.tabular.model import build
    from veil.tabular.shipped import default_transform

    chosen = transform or default_transform()
    if chosen is None:
        raise DatasetError("no breast-cancer transform ships with this veil: pass --transform DIR")
    data = rows("test")
    model = build().eval()
    q = veil.load(chosen, model)
    say(f"Rows: the {len(data.y)} test rows of sklearn's breast-cancer data; transform {chosen.name}")
    with torch.inference_mode():
        clean = model(torch.from_numpy(data.x)).argmax(1).numpy()
    out.mkdir(parents=True, exist_ok=True)
    sent_parts: list[np.ndarray] = []
    private_parts: list[np.ndarray] = []
    http, grpc, metrics_port = free_ports(3)
    log = (out / "triton.log").resolve()
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics_port, log_file=log)
    say(f"Starting Triton on 127.0.0.1 serving the tail (its log: {log})")
    with VeilServer.from_transform(chosen, config).start() as server:
        say(f"serving {', '.join(server.served)}")
        url = server.endpoints.grpc if protocol == "grpc" else server.endpoints.http
        client = VeilClient(url, protocol, transform=q, timeout=120)
        try:
            step = client.max_batch_size  # one request per call: last_sent is all that call sent
            for start in range(0, len(data.y), step):
                logits = client.infer(torch.from_numpy(data.x[start : start + step]))
                assert client.last_sent is not None
                sent_parts.append(client.last_sent)
                private_parts.append(torch.as_tensor(logits).argmax(1).numpy())
        finally:
            client.close()
        say("Stopping Triton")
    result = TabularResult(
        y=data.y,
        clean=clean,
        private=np.concatenate(private_parts),
        sent=np.concatenate(sent_parts),
        classes=class_names(),
        transform=Path(chosen),
        alpha=float(q.alpha),
    )
    result.metrics = {"clean": metrics(result.clean, data.y), "private": metrics(result.private, data.y)}
    result.best_attack = best_recovered(chosen)
    result.picture = save_picture(result, out / PICTURE)
    return result


def report(r: TabularResult) -> str:
    """What ``veil demo --task breast-cancer-mlp`` prints after the run."""
    lines = [*row_lines(r), "", format_table(r)]
    if r.best_attack is not None:
        name, r2 = r.best_attack
        lines.append(f"attacker at alpha {r.alpha:g}: best-recovered column {name!r} (R^2 {r2:.3f})")
    return "\n".join(lines)
