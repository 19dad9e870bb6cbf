"""What every peer defence shares: the task hook, the training budget, the families and their levels."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.errors import InputError
from veil.protection import Protected, protect
from veil.protection.objectives import resolve

FAMILIES: tuple[str, ...] = ("gaussian", "shredder", "nopeek", "disco", "blur", "downscale")
#: What each family's level means.
KNOBS: dict[str, str] = {
    "gaussian": "sigma / activation std",
    "shredder": "alpha",
    "nopeek": "lambda (dCor weight)",
    "disco": "pruned share of channels",
    "blur": "blur sigma (input pixels)",
    "downscale": "downscale factor",
}
#: Default levels: weak to strong (more of the knob: less accuracy, less leakage).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.5, 1.0, 2.0),
    "shredder": (0.2, 0.5, 0.8),
    "nopeek": (0.3, 1.0, 3.0),
    "disco": (0.5, 0.75, 0.9),
    "blur": (1.0, 2.0, 4.0),
    "downscale": (2.0, 4.0, 8.0),
}
NOISY: tuple[str, ...] = ("gaussian", "shredder")  # the families whose release is random (K matters)
FLAT = -30.0  # rho with sigma exactly 0 (tanh(-30) == -1 in float32)


class PeerTask(Protocol):
    """A task's side of the peer comparison (``ModelEntry.peers()``), injected to keep the core task-free.

    ``score(module)``: the task's metric (higher is better) of a module mapping model inputs to outputs;
    ``batches``: unlabeled model-input batches to train peers on; ``normalisation``: what ``veil.protect``
    records (``{"mean", "std"}``); ``to_input(images, size)``: uint8 RGB images [3, h, w] -> a model-input
    batch at ``size`` x ``size``; ``load(path)``: one of the task's own transforms as a ``Protected``
    (None: ``veil.load``); ``draws``: noise draws averaged for a noisy defence's score.
    """

    score: Callable[[nn.Module], float]
    batches: list[Tensor]
    normalisation: dict[str, Any] | None
    to_input: Callable[[Sequence[Tensor], int], Tensor]
    load: Callable[[Any], Any] | None
    draws: int
    name: str
    metric: str


@dataclass
class PeerConfig:
    """The peers' training budget (fixed and recorded, like the attacker's)."""

    steps: int = 200  # shredder's noise fit, nopeek's fine-tuning, disco's gate game
    tail_steps: int = 100  # the tail's fine-tuning after disco's pruning and under blur / downscale
    lr: float = 0.05  # noise (shredder) and gates (disco)
    lr_head: float = 1e-4
    lr_tail: float = 1e-4
    disco_weight: float = 1.0  # rho of DISCO's min-max: task + rho * adversary term
    seed: int = 0
    progress: bool = True


def check_families(families: Sequence[str], levels: Mapping[str, Sequence[float]] | None = None) -> None:
    """Refuse an unknown family or a level outside the family's range in one line."""
    for fam in families:
        if fam not in FAMILIES:
            raise InputError(f"unknown peer family {fam!r}: choose from {', '.join(FAMILIES)}")
    for fam, values in (levels or {}).items():
        if fam not in FAMILIES:
            raise InputError(
                f"levels given for unknown peer family {fam!r}: choose from {', '.join(FAMILIES)}"
            )
        for v in values:
            if not _valid_level(fam, float(v)):
                raise InputError(f"peer {fam}: level {v} is out of range ({_level_rule(fam)})")


def _valid_level(family: str, v: float) -> bool:
    if not math.isfinite(v):
        return False
    if family in ("shredder", "disco"):
        return 0.0 <= v < 1.0
    if family == "downscale":
        return v >= 1.0
    return v >= 0.0


def _level_rule(family: str) -> str:
    rules = {"shredder": "alpha in [0, 1)", "disco": "a share in [0, 1)", "downscale": "a factor >= 1"}
    return f"{KNOBS[family]}: " + rules.get(family, "a number >= 0")


# -- helpers ---------------------------------------------------------------------------------------
def base(
    model: nn.Module, split: str, task: PeerTask, alpha: float = 0.0, gran: str = "channel"
) -> Protected:
    example = task.batches[0]
    p = protect(
        model, split=split, alpha=alpha, example=example, granularity=gran, normalisation=task.normalisation
    )
    p.meta["peer"] = {}
    return p


def deterministic(p: Protected) -> Protected:
    """Make ``p``'s noise a no-op (mu = 0, sigma = 0, nothing suppressed): release = head(x)."""
    with torch.no_grad():
        p.noise.mu.zero_()
        p.noise.rho.fill_(FLAT)
        p.noise.keep.fill_(True)
    p.noise.requires_grad_(False)
    return p


@torch.no_grad()
def activation_std(p: Protected, batches: Sequence[Tensor]) -> float:
    """The std of the head's activation over ``batches`` (what a relative sigma is relative to)."""
    acts = [p.head.eval()(b).float() for b in batches]
    return float(torch.cat([a.flatten() for a in acts]).std())


def fit_noise(p: Protected, task: PeerTask, cfg: PeerConfig, steps: int, **options: Any) -> dict[str, Any]:
    return p.fit(task.batches, steps=steps, lr=cfg.lr, lr_tail=cfg.lr_tail, progress=cfg.progress, **options)


def tune_tail(
    p: Protected, task: PeerTask, cfg: PeerConfig, steps: int | None = None, desc: str = "tail"
) -> None:
    """Fine-tune the tail (distillation from the clean model) on ``p``'s own release, head and noise fixed.

    Its own loop: :meth:`Protected.fit`'s ``-log mean sigma`` is infinite for a release without noise.
    """
    steps = cfg.tail_steps if steps is None else steps
    if steps <= 0:
        return
    _, task_fn = resolve(None, p.task)
    p.eval()
    p.tail.requires_grad_(True)
    opt = torch.optim.Adam([q for q in p.tail.parameters() if q.requires_grad], lr=cfg.lr_tail)
    for step in tqdm(range(steps), desc=desc, disable=not cfg.progress, leave=False):
        x = task.batches[step % len(task.batches)]
        with torch.no_grad():
            clean, release = p.teacher(x), p.release(x)
        loss = task_fn(p.tail(release), clean, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    p.eval().requires_grad_(False)
