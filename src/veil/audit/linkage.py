"""The linkage attack: can the receiver tell that two requests show the same person?

A small verifier is trained to classify the identities of the auxiliary images (LFW file names carry the
person: ``Aaron_Peirsol_0001.jpg``) from their *released* tensors, with fresh noise every step; its
penultimate features are then compared by cosine similarity on pairs of held-out people it never saw.
ROC AUC 0.5 means the receiver cannot link requests; the clean activations are the baseline. A second,
training-free score (cosine similarity of the raw released tensors) is reported too, and the stronger
of the two is the attack's AUC, so a weak verifier cannot flatter the transform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from veil.audit.attack import NoiseSpec
from veil.audit.metrics import roc_auc

_PERSON = re.compile(r"^(?P<person>.+)_(?P<index>\d{4})$")


@dataclass
class LinkageConfig:
    """The verifier's fixed recipe."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    embedding: int = 128
    min_images: int = 2  # identities with fewer auxiliary images are not classes
    seed: int = 0
    device: str = "cpu"


def person_of(path: Path) -> str | None:
    """The person's name for LFW-style file names (``Name_Surname_0003.jpg``), else None."""
    match = _PERSON.match(path.stem)
    return match.group("person") if match else None


class Verifier(nn.Module):
    """1x1 conv 128->64, 3x3 conv stride 2, pool to 4x4, linear -> embedding; linear -> identities."""

    def __init__(self, in_channels: int, classes: int, embedding: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, embedding),
        )
        self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(embedding, classes))
        self.register_buffer("in_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("in_std", torch.ones(1, in_channels, 1, 1))

    in_mean: Tensor
    in_std: Tensor

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.features((x - self.in_mean) / self.in_std), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features((x - self.in_mean) / self.in_std))


def _release(clean: Tensor, noise: NoiseSpec | None, gen: torch.Generator) -> Tensor:
    return clean if noise is None else noise.draw(clean, gen)


def train_verifier(
    acts: Tensor,
    paths: Sequence[Path],
    noise: NoiseSpec | None,
    cfg: LinkageConfig,
    desc: str = "verifier",
    progress: bool = True,
) -> Verifier | None:
    """Identity classifier on released auxiliary tensors; None when the names carry no identities."""
    people = [person_of(p) for p in paths]
    counts: dict[str, int] = {}
    for name in people:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    classes = sorted(n for n, c in counts.items() if c >= cfg.min_images)
    if len(classes) < 2:
        return None
    label_of = {n: i for i, n in enumerate(classes)}
    idx = torch.tensor([i for i, n in enumerate(people) if n in label_of])
    labels = torch.tensor([label_of[n] for n in people if n in label_of])
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    model = Verifier(acts.shape[1], len(classes), cfg.embedding).to(dev)
    noise = None if noise is None else noise.to(dev)
    labels = labels.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    with torch.no_grad():
        sample = _release(acts[idx[:256]].to(dev), noise, noise_gen)
        model.in_mean.copy_(sample.mean((0, 2, 3), keepdim=True))
        model.in_std.copy_(sample.std((0, 2, 3), keepdim=True).clamp_min(1e-6))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps))
    model.train()
    for _ in tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False):
        pick = torch.randint(0, idx.numel(), (min(cfg.batch_size, idx.numel()),), generator=gen)
        x = _release(acts[idx[pick]].to(dev, non_blocking=True), noise, noise_gen)
        loss = F.cross_entropy(model(x), labels[pick.to(dev)], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def pairs(paths: Sequence[Path]) -> tuple[Tensor, Tensor, Tensor] | None:
    """All (i, j, same-person) pairs among images with an LFW-style name; None without a same pair."""
    people = [person_of(p) for p in paths]
    named = [i for i, n in enumerate(people) if n is not None]
    if len(named) < 2:
        return None
    ii, jj = torch.triu_indices(len(named), len(named), offset=1)
    named_t = torch.tensor(named)
    ii, jj = named_t[ii], named_t[jj]
    same = torch.tensor([people[a] == people[b] for a, b in zip(ii.tolist(), jj.tolist(), strict=True)])
    if not bool(same.any()) or bool(same.all()):
        return None
    return ii, jj, same


@torch.no_grad()
def linkage_auc(
    verifier: Verifier | None,
    acts: Tensor,
    paths: Sequence[Path],
    noise: NoiseSpec | None,
    seed: int = 4321,
) -> dict[str, float] | None:
    """ROC AUC of same/different-person pairs from one release per image; None without pairs."""
    found = pairs(paths)
    if found is None:
        return None
    ii, jj, same = found
    released = _release(acts, noise, torch.Generator().manual_seed(seed))
    raw = F.normalize(released.flatten(1) - released.flatten(1).mean(0, keepdim=True), dim=1)
    out = {"raw_auc": roc_auc((raw @ raw.T)[ii, jj], same), "pairs_same": float(same.sum())}
    out["pairs_different"] = float((~same).sum())
    if verifier is not None:
        dev = verifier.in_mean.device
        emb = torch.cat(
            [verifier.embed(released[i : i + 128].to(dev)).cpu() for i in range(0, released.shape[0], 128)]
        )
        out["verifier_auc"] = roc_auc((emb @ emb.T)[ii, jj], same)
    out["auc"] = max(out["raw_auc"], out.get("verifier_auc", 0.0))
    return out
