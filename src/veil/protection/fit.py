"""The fit loop: the noisy model learns to reproduce the clean model's outputs (label-free).

loss = (1 - alpha) * task(noisy outputs, clean outputs) + alpha * (-log mean sigma), the objective of
``veil train`` (:func:`veil.noise.privacy_loss`). The noise (mu, rho) and the tail learn; the
head stays frozen unless ``train_head``. Batch norm statistics stay frozen (head and tail run in eval mode).

Privacy objective (:mod:`veil.protection.privacy`): ``objective="mean"`` (the default) is the ``-log mean
sigma`` above; ``objective="adversarial", attacker=A`` adds ``adversary_weight * A.privacy_term(release, x)``
for an attacker trained online, one ``A.step`` per fit step on that step's release (e.g.
:class:`veil.audit.online.OnlineAttacker`). ``history`` rows are ``[step, total, task, mean sigma,
attack_vs_floor]`` (the last is NaN without an attacker).

``train_head=True`` fine-tunes the head too (lr_head; still in eval mode, so batch norm statistics stay
as they were): the saved transform then stores the head's weights (``head.*``, inside ``release_sha256``)
and records the trained head's fingerprint, so a client runs this head, not the model's.
``train_noise=False`` keeps the release exactly (noise frozen, no suppression): only the tail learns
(:func:`veil.protection.tail.tune_tail`).

Suppression as in ``veil train``: at ``suppress_from`` of the steps (default 70 %), elements (channels)
whose sigma exceeds ``suppress_factor * smax`` are replaced by the constant mu (at most ``suppress_max`` of
them, the noisiest), and the remaining steps let the tail adapt to the mask; ``suppress_from=1.0``
turns it off.

Checkpoint: ``fit(..., checkpoint=PATH)`` writes the state (noise, tail, head, optimizer, step, smax)
atomically every ``log_every`` steps and at the end; a later ``fit`` with the same PATH resumes from the
recorded step (after a crash, or with a larger ``steps`` to train on). Under ``torchrun`` (WORLD_SIZE > 1)
the trainable parts run under DistributedDataParallel (gloo on CPU); give each rank its own share of the
data (e.g. a DataLoader with a DistributedSampler); rank 0 writes the checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from veil.device import dist_info
from veil.errors import InputError
from veil.noise import privacy_loss
from veil.protection.objectives import LossFn, resolve
from veil.protection.privacy import Adversary, resolve_objective

if TYPE_CHECKING:
    from veil.protection import Protected


def batch_input(batch: Any) -> Tensor:
    """The model input of a batch: the tensor itself or the first element of a tuple/list."""
    x = batch[0] if isinstance(batch, tuple | list) and batch else batch
    if not isinstance(x, Tensor):
        raise InputError(
            f"a batch must be an input tensor or an (input, ...) tuple, got {type(batch).__name__}"
        )
    return x


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Go over ``batches`` again and again (a list, a DataLoader); a spent one-shot iterator is an error."""
    passes = 0
    while True:
        seen = False
        for batch in batches:
            seen = True
            yield batch
        if not seen:
            what = "is empty" if passes == 0 else "ran out (an iterator can be read only once)"
            raise InputError(f"batches {what}: pass a list of tensors or a DataLoader, which fit re-reads")
        passes += 1


class _Trainable(nn.Module):
    """head -> noise -> tail as one module, so DDP averages every set of gradients."""

    def __init__(self, p: Protected, train_head: bool) -> None:
        super().__init__()
        self.head, self.noise, self.tail = p.head, p.noise, p.tail
        self.train_head = train_head

    def forward(self, x: Tensor) -> tuple[Any, Tensor]:
        """(the noisy model's outputs, the release they were computed from)."""
        if self.train_head:
            a = self.head(x)
        else:
            with torch.no_grad():
                a = self.head(x)
        release = self.noise(a)
        return self.tail(release), release


def _check(**numbers: float) -> None:
    for option, value in numbers.items():
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"fit: {option} must be a finite number > 0, got {value}")


def _save(
    path: Path,
    step: int,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    smax: float,
    extra: Any,
    attacker: Adversary | None,
) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    state = {"step": step, "module": module.state_dict(), "optimizer": opt.state_dict(), "smax": smax}
    if attacker is not None:
        state["attacker"] = attacker.state_dict()
    torch.save(state | {"history": extra}, tmp)
    os.replace(tmp, path)


def fit(
    p: Protected,
    batches: Iterable[Any],
    steps: int = 200,
    lr: float = 0.05,
    *,
    lr_tail: float = 1e-4,
    lr_head: float = 1e-4,
    loss: str | LossFn | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    train_tail: bool = True,
    train_head: bool = False,
    train_noise: bool = True,
    objective: str | None = None,
    attacker: Adversary | None = None,
    adversary_weight: float = 1.0,
    suppress_factor: float = 0.95,
    suppress_from: float = 0.7,
    suppress_max: float = 1.0,
    log_every: int = 10,
) -> dict[str, Any]:
    """Train ``p``'s noise (lr), tail (lr_tail) and, with ``train_head``, head (lr_head); see the module.

    ``objective``: ``"mean"`` (default) or ``"adversarial"`` (needs ``attacker``, an
    :class:`veil.protection.privacy.Adversary`; giving ``attacker`` alone implies it).
    """
    if int(steps) < 1 or int(log_every) < 1:
        raise InputError(f"fit: steps and log_every must be >= 1, got {steps} and {log_every}")
    _check(lr=lr, lr_tail=lr_tail, lr_head=lr_head, suppress_factor=suppress_factor)
    _check(adversary_weight=adversary_weight)
    objective = resolve_objective(objective, attacker)
    if not (train_noise or train_tail or train_head):
        raise InputError("fit: nothing to train (train_noise, train_tail and train_head are all off)")
    if objective == "adversarial" and not train_noise:
        raise InputError("fit: objective='adversarial' trains the noise: it needs train_noise=True")
    if not (0.0 <= suppress_from <= 1.0 and 0.0 <= suppress_max <= 1.0):
        raise InputError(
            f"fit: suppress_from and suppress_max are shares in [0, 1], got {suppress_from}, {suppress_max}"
        )
    task_name, task_fn = resolve(loss, p.task)
    rank, world = dist_info()
    dev = next(p.noise.parameters()).device
    p.eval()
    p.noise.requires_grad_(train_noise)
    p.tail.requires_grad_(train_tail)
    p.head.requires_grad_(train_head)
    module = _Trainable(p, train_head)
    groups: list[dict[str, Any]] = [{"params": list(p.noise.parameters()), "lr": lr}] if train_noise else []
    if train_tail:
        groups.append({"params": [q for q in p.tail.parameters() if q.requires_grad], "lr": lr_tail})
    if train_head:
        groups.append({"params": [q for q in p.head.parameters() if q.requires_grad], "lr": lr_head})
    opt = torch.optim.Adam(groups)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start, history = 0, []
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        p.noise.smax, start, history = float(state["smax"]), int(state["step"]), list(state["history"])
        if attacker is not None and "attacker" in state:
            attacker.load_state_dict(state["attacker"])
        elif attacker is not None and start > 0:
            raise InputError(f"{ckpt}: a fit without an attacker: delete it to start the adversarial fit")
        if attacker is None and "attacker" in state:
            raise InputError(
                f"{ckpt}: an adversarial fit (it holds an online attacker): pass the same attacker= to "
                "resume it, or delete the checkpoint"
            )
    elif world > 1:  # every rank must use rank 0's smax (DDP syncs parameters, not this number)
        box = [p.noise.smax]
        dist.broadcast_object_list(box, src=0)
        p.noise.smax = float(box[0])
    ddp: nn.Module = nn.parallel.DistributedDataParallel(module) if world > 1 else module
    suppress_at = int(steps * suppress_from) if train_noise else steps
    data = _cycle(batches)
    bar = tqdm(range(start, steps), desc=f"veil fit alpha={p.alpha}", disable=not progress or rank > 0)
    for step in bar:
        if step == suppress_at and p.noise.granularity != "conditional":
            p.noise.suppress_above(suppress_factor * p.noise.smax, suppress_max)
        batch = next(data)
        x = batch_input(batch).to(dev)
        with torch.no_grad():
            clean = p.teacher(x)
        noisy, release = ddp(x)
        task = task_fn(noisy, clean, batch)
        priv = privacy_loss(p.noise)
        attack_vs_floor = float("nan")
        if attacker is not None:
            attack_vs_floor = float(attacker.step(release.detach(), x))
            priv = priv + adversary_weight * attacker.privacy_term(release, x)
        total = (1 - p.alpha) * task + p.alpha * priv
        if not math.isfinite(total.item()):  # nothing of this step is applied or checkpointed
            raise InputError(
                f"fit diverged at step {step + 1} (loss {total.item()}): lower lr / lr_tail and fit again"
            )
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sigma = float(p.noise.mean_sigma().detach())
        history.append([step + 1, total.item(), task.item(), sigma, attack_vs_floor])
        if (step + 1) % log_every == 0 or step + 1 == steps:
            shown = {"task": f"{task.item():.4f}", "sigma": f"{sigma:.3f}"}
            if attacker is not None:
                shown["attack"] = f"{attack_vs_floor:.3f}"
            bar.set_postfix(shown)
            if ckpt is not None and rank == 0:
                _save(ckpt, step + 1, module, opt, p.noise.smax, history, attacker)
    p.eval().requires_grad_(False)
    p.head_trained = p.head_trained or train_head
    first = [h[2] for h in history[:5]]
    last = [h[2] for h in history[-5:]]
    result = {
        "steps": steps,
        "resumed_at": start,
        "loss": task_name,
        "objective": objective,
        "adversary_weight": adversary_weight if attacker is not None else None,
        "lr": lr if train_noise else None,
        "lr_tail": lr_tail if train_tail else None,
        "lr_head": lr_head if train_head else None,
        "suppress_factor": suppress_factor,
        "suppress_from": suppress_from,
        "suppress_max": suppress_max,
        "world_size": world,
        "task_first": sum(first) / max(len(first), 1),
        "task_last": sum(last) / max(len(last), 1),
        "mean_sigma": float(p.noise.mean_sigma()),
        "suppressed_fraction": p.noise.suppressed_fraction,
    }
    attacks = [h[4] for h in history[-5:] if len(h) > 4 and math.isfinite(h[4])]
    if attacks:
        result["attack_vs_floor_last"] = sum(attacks) / len(attacks)
    p.meta["task"], p.meta["fit"] = task_name, result
    p.history = history
    return result
