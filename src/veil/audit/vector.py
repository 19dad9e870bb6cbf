"""The privacy audit of vector releases: how well an attacker regresses the input features back.

For any ``veil.protect`` transform whose input spec is a vector ``(B, D)`` (floating point) and whose
wire is ``(B, C)``: tabular rows, embeddings, sensor readings. Threat model as for images
(:mod:`veil.audit.attack`): the attacker knows the head's weights and the transform's distribution
(mu, sigma, suppression mask) and has auxiliary rows from the same population, never a request's noise.
It caches the clean head activations of its rows and trains an MLP decoder (C -> width -> width -> D,
MSE on features standardised with the auxiliary rows' statistics) with a *fresh* draw from the
transform's noise at every step; the checkpoint with the best R^2 on a held-out slice of the auxiliary
rows is kept. The same recipe on clean activations is the baseline that proves the attack works.

Score: R^2 per feature on rows the attacker never trained on, ``1 - SSE / SST`` with SST around that set's
own mean, so predicting the mean vector scores exactly 0 (the floor; predicting the auxiliary rows' mean,
what an attacker without the release can do, is reported too and is slightly below 0). Overall R^2 is the
mean over features. Noisy releases are scored over ``eval_draws`` fresh draws (mean, std). The best
recovered feature is named: the column that leaks most.

Rows: ``--aux``/``--eval`` as ``.npy`` (N, D) or ``.csv`` (a header of D column names, numbers below), or,
without them, the model's own ``ModelEntry.audit_data`` (e.g. breast-cancer-mlp: train rows for the
attacker, test rows to score). Writes report.md, metrics.json and r2_per_feature.png (see
:mod:`veil.audit.vector_report`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from veil.artifact import Transform, release_digest
from veil.audit.attack import NoiseSpec
from veil.audit.inputs import load_model, load_protected, read_transform
from veil.errors import InputError, brief


@dataclass
class VectorAttackConfig:
    """The vector attacker's fixed recipe (numbers are comparable across transforms with the same one)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3  # Adam, cosine decay to 5 %
    width: int = 256
    val_share: float = 0.2  # of the auxiliary rows, held out for model selection and the curve
    eval_every: int = 100
    eval_draws: int = 5  # fresh noise draws per scored row set
    max_rows: int | None = None  # cap on auxiliary rows (tests)
    seed: int = 0
    device: str = "cpu"


class VectorDecoder(nn.Module):
    """Release (B, C) -> standardised features (B, D)."""

    def __init__(self, wire: int, features: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(wire, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, features)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


@dataclass
class VectorAttacker:
    decoder: VectorDecoder
    mean: Tensor  # target standardisation (auxiliary training rows)
    std: Tensor
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation R^2)
    best_step: int = 0
    best_val_r2: float = float("-inf")

    @torch.no_grad()
    def predict(self, release: Tensor) -> Tensor:
        return self.decoder(release) * self.std + self.mean


def is_vector(tr: Transform) -> bool:
    """True when the transform's input spec is (D,) floating point and its wire (C,)."""
    ins, wire = tr.meta.get("input_spec") or {}, tr.meta.get("wire_spec") or {}
    dtype = getattr(torch, str(ins.get("dtype", "?")), None)
    floating = isinstance(dtype, torch.dtype) and dtype.is_floating_point
    return len(ins.get("shape", [])) == 1 and len(wire.get("shape", [])) == 1 and floating


def r2_per_feature(pred: Tensor, target: Tensor) -> Tensor:
    """1 - SSE/SST per column, SST around the target's own mean (a constant column scores 0 or below)."""
    sse = ((pred - target) ** 2).sum(0)
    sst = ((target - target.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return 1 - sse / sst


def _released(clean: Tensor, spec: NoiseSpec | None, gen: torch.Generator) -> Tensor:
    return clean if spec is None else spec.draw(clean, gen)


def train_vector_attacker(
    acts: Tensor,
    targets: Tensor,
    spec: NoiseSpec | None,
    cfg: VectorAttackConfig,
    desc: str = "attack",
    progress: bool = True,
) -> VectorAttacker:
    """Train the decoder on ``acts`` (clean, (N, C)) -> ``targets`` ((N, D)) with fresh noise per step."""
    dev = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(acts), generator=gen)
    n_val = max(1, round(cfg.val_share * len(acts)))
    if len(acts) - n_val < 2:
        raise InputError(f"the vector attacker needs at least {n_val + 2} auxiliary rows, got {len(acts)}")
    val, train = order[:n_val], order[n_val:]
    a_tr, y_tr = acts[train].to(dev), targets[train].to(dev)
    a_val, y_val = acts[val].to(dev), targets[val].to(dev)
    mean, std = y_tr.mean(0), y_tr.std(0).clamp_min(1e-8)
    torch.manual_seed(cfg.seed)
    decoder = VectorDecoder(acts.shape[1], targets.shape[1], cfg.width).to(dev)
    attacker = VectorAttacker(decoder, mean, std)
    spec = None if spec is None else spec.to(dev)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
    )
    draw_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    best = copy.deepcopy(decoder.state_dict())
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress):
        idx = torch.randint(len(a_tr), (cfg.batch_size,), generator=gen).to(dev)
        release = _released(a_tr[idx], spec, draw_gen)
        loss = ((decoder(release) - (y_tr[idx] - mean) / std) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)  # the same draw every time
            r2 = float(r2_per_feature(attacker.predict(_released(a_val, spec, val_gen)), y_val).mean())
            attacker.curve.append((step, r2))
            if r2 > attacker.best_val_r2:
                attacker.best_val_r2, attacker.best_step = r2, step
                best = copy.deepcopy(decoder.state_dict())
    decoder.load_state_dict(best)
    decoder.eval()
    return attacker


def score(
    attacker: VectorAttacker, acts: Tensor, targets: Tensor, spec: NoiseSpec | None, draws: int, seed: int
) -> dict[str, Any]:
    """R^2 per feature (mean over draws), overall (mean over features) with its std over draws."""
    dev = attacker.mean.device
    spec = None if spec is None else spec.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = 1 if spec is None else draws
    rows = [
        r2_per_feature(attacker.predict(_released(acts.to(dev), spec, gen)), targets.to(dev)).cpu()
        for _ in range(n)
    ]
    per = torch.stack(rows)  # (draws, D)
    overall = per.mean(1)
    return {
        "r2": float(overall.mean()),
        "r2_std": float(overall.std()) if n > 1 else 0.0,
        "draws": n,
        "per_feature": per.mean(0).tolist(),
    }


def read_rows(path: Path, features: int | None = None) -> tuple[np.ndarray, list[str] | None]:
    """(rows (N, D) float32, column names or None) of a ``.npy`` or ``.csv`` file; refusals in one line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (rows for the vector audit: .csv or .npy)")
    if not path.is_file() or path.suffix.lower() not in (".npy", ".csv"):
        raise InputError(
            f"{path}: a vector audit reads rows from a .npy (N, D) or .csv file (header of column names); "
            "or leave --aux/--eval out for a model that supplies its own rows"
        )
    names = None
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            names = [h.strip() for h in path.open().readline().strip().split(",")]
            data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read rows ({brief(exc, 120)})") from None
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or not len(data) or not np.isfinite(data).all():
        raise InputError(f"{path}: need a 2-D table of finite numbers, got shape {data.shape}")
    if features is not None and data.shape[1] != features:
        raise InputError(f"{path}: {data.shape[1]} columns per row, the transform's input has {features}")
    return data, names


def audit_rows(
    model_spec: str, aux: Path | None, evals: Sequence[Path], features: int
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """(auxiliary rows, {eval name: rows}, column names) from the files, else the model's audit_data."""
    if aux is None and not evals:
        from veil.models.public import resolve_entry

        supply = resolve_entry(model_spec).audit_data
        if supply is None:
            raise InputError(
                f"--model {model_spec} supplies no audit rows: pass --aux ROWS.csv|.npy (the attacker's) and "
                "--eval ROWS.csv|.npy (held out)"
            )
        data = supply()
        named = {k: np.asarray(v, dtype=np.float32) for k, v in data["eval"].items()}
        return np.asarray(data["aux"], dtype=np.float32), named, list(data["features"])
    if aux is None or not evals:
        raise InputError("give both --aux (the attacker's rows) and --eval (held-out rows), or neither")
    rows, names = read_rows(aux, features)
    sets = {Path(p).stem: read_rows(Path(p), features)[0] for p in evals}
    return rows, sets, names or [f"x{i}" for i in range(features)]


@dataclass
class _Target:
    name: str
    kind: str  # "clean" or "transform"
    split: str
    head: nn.Module
    protected: Any = None
    path: Path | None = None


def _targets(
    loaded: Sequence[tuple[Path, Any]], model: nn.Module, clean_splits: Sequence[str]
) -> list[_Target]:
    from veil.protection.store import example_from
    from veil.split.graph import cut

    out: list[_Target] = []
    seen: set[str] = set()
    for _, p in loaded:
        for split in [str(p.split), *clean_splits]:
            if split in seen:
                continue
            seen.add(split)
            if split == p.split and not p.head_trained:
                head = p.head
            else:
                head = cut(copy.deepcopy(model), split, example_from(p.meta["input_spec"]))[0].eval()
            out.append(_Target(f"clean {split}", "clean", split, head))
    for path, p in loaded:
        if p.head_trained:
            out.append(_Target(f"{path.name} head, no noise", "clean", str(p.split), p.head, None, path))
        out.append(_Target(path.name, "transform", str(p.split), p.head, p, path))
    return out


def run_vector_audit(
    loaded: Sequence[tuple[Path, Any]],
    model: nn.Module,
    aux: np.ndarray,
    evals: dict[str, np.ndarray],
    features: Sequence[str],
    out: str | Path,
    cfg: VectorAttackConfig | None = None,
    clean_splits: Sequence[str] = (),
    model_spec: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Attack the clean heads and each loaded ``(path, veil.load(path, model))``; write the report."""
    from veil.audit.vector_report import write_vector_report

    cfg = cfg or VectorAttackConfig()
    if not loaded:
        raise InputError("a vector audit needs at least one transform directory (--transform)")
    aux_t = torch.from_numpy(np.ascontiguousarray(aux[: cfg.max_rows]))
    eval_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in evals.items()}
    aux_mean = aux_t.mean(0)
    floors = {k: float(r2_per_feature(aux_mean.expand_as(v), v).mean()) for k, v in eval_t.items()}
    results = []
    for target in tqdm(_targets(loaded, model, clean_splits), desc="vector audit", disable=not progress):
        with torch.no_grad():
            target.head.eval()
            a_aux = target.head(aux_t).float()
            a_eval = {k: target.head(v).float() for k, v in eval_t.items()}
        if a_aux.dim() != 2:
            raise InputError(f"the head at {target.split} gives {tuple(a_aux.shape)}, not (B, C)")
        p = target.protected
        spec = NoiseSpec.of(p.noise, a_aux.shape[1:]) if p is not None else None
        attacker = train_vector_attacker(a_aux, aux_t, spec, cfg, f"attack {target.name}", progress)
        res: dict[str, Any] = {"name": target.name, "kind": target.kind, "split": target.split}
        res["wire_shape"] = [int(a_aux.shape[1])]
        if p is not None:
            res |= {"alpha": float(p.alpha), "transform": str(target.path)}
            res |= {"mean_sigma": float(p.noise.mean_sigma()), "granularity": p.noise.granularity}
            res["suppressed_fraction"] = float(p.noise.suppressed_fraction)
            res["release_sha256"] = release_digest(read_transform(target.path))
        res["sets"] = {}
        for name, rows in eval_t.items():
            s = score(attacker, a_eval[name], rows, spec, cfg.eval_draws, cfg.seed + 101)
            per = dict(zip(features, s["per_feature"], strict=True))
            best = max(per, key=lambda f: per[f])
            res["sets"][name] = s | {"per_feature": per, "best_feature": {"name": best, "r2": per[best]}}
        res["training"] = {"curve": attacker.curve, "best_step": attacker.best_step}
        res["training"]["best_val_r2"] = attacker.best_val_r2
        results.append(res)
        if progress:
            first = next(iter(res["sets"].values()))
            tqdm.write(
                f"{target.name}: R^2 {first['r2']:.3f} ± {first['r2_std']:.3f}, best feature "
                f"{first['best_feature']['name']} ({first['best_feature']['r2']:.3f})"
            )
    result = {
        "config": asdict(cfg) | {"model": model_spec, "aux_rows": len(aux_t), "kind": "vector"},
        "features": list(features),
        "eval_sets": {k: len(v) for k, v in eval_t.items()},
        "floor": {"r2": 0.0, "aux_mean_r2": floors},
        "targets": results,
    }
    write_vector_report(result, Path(out))
    return result


def audit_vectors(
    transforms: Sequence[Path],
    model_spec: str | None,
    weights: Path | None,
    aux: Path | None,
    evals: Sequence[Path],
    out: Path,
    cfg: VectorAttackConfig,
    clean_splits: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """``veil audit --transform DIR --model NAME`` for vector transforms (the CLI's entry)."""
    trs = [read_transform(p) for p in transforms]
    if model_spec is None:
        raise InputError(
            f"--transform {transforms[0]} was made by veil.protect for a {trs[0].meta.get('model')}: pass "
            "that model with --model NAME|package.module:factory (and --weights)"
        )
    dims = {int(tr.meta["input_spec"]["shape"][0]) for tr in trs}
    if len(dims) != 1:
        raise InputError(f"the transforms take inputs of {sorted(dims)} features: audit them separately")
    rows, sets, names = audit_rows(model_spec, aux, evals, dims.pop())
    net = load_model(model_spec, weights)
    loaded = [(Path(p), load_protected(Path(p), net)) for p in transforms]
    return run_vector_audit(
        loaded, net, rows, sets, names, out, cfg, clean_splits, model_spec=model_spec, progress=progress
    )
