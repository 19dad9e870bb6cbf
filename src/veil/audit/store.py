"""Trained attackers on disk: decoder weights plus the noise distribution they were trained against.

Stored as safetensors (data only, nothing executable), written atomically, so a notebook can load an
audit's attacker and show what an eavesdropper rebuilds from a released tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from veil.audit.attack import Attacker, NoiseSpec
from veil.audit.decoder import ARCHITECTURE, Decoder
from veil.errors import InputError
from veil.imageio import atomic_write_bytes
from veil.noise import NoiseTransform


def save_attacker(attacker: Attacker, path: str | Path) -> Path:
    """Store a trained attacker (decoder weights + its noise distribution) as safetensors, atomically."""
    from safetensors.torch import save as save_bytes

    state = attacker.decoder.state_dict()
    tensors = {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    if attacker.noise is not None:
        tensors |= {
            "noise.mu": attacker.noise.mu,
            "noise.sigma": attacker.noise.sigma,
            "noise.keep": attacker.noise.keep.to(torch.uint8),
        }
    cond = attacker.noise.conditional if attacker.noise is not None else None
    if cond is not None:  # the attacker's copy of the sender's sigma network
        tensors |= {f"noise.conditional.{k}": v.detach().cpu() for k, v in cond.state_dict().items()}
    d = attacker.decoder
    meta = {
        "architecture": ARCHITECTURE,
        "in_channels": d.in_channels,
        "in_size": d.in_size,
        "out_size": d.out_size,
        "width": d.width,
        "k": attacker.k,
    }
    if cond is not None:
        meta["conditional"] = {"shape": list(cond.shape), "smin": cond.smin, "smax": cond.smax}
    path = Path(path)
    atomic_write_bytes(
        path, save_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata={"veil": json.dumps(meta)})
    )
    return path


def load_attacker(path: str | Path) -> Attacker:
    """Load an attacker written by :func:`save_attacker` (data only, nothing executable)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("veil", "{}"))
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if meta.get("architecture") != ARCHITECTURE:
        raise InputError(f"{path}: not a {ARCHITECTURE} attacker")
    decoder = Decoder(meta["in_channels"], meta["in_size"], meta["out_size"], meta["width"])
    decoder.load_state_dict(
        {k.removeprefix("decoder."): v for k, v in tensors.items() if k.startswith("decoder.")}
    )
    noise = None
    if "noise.mu" in tensors:
        noise = NoiseSpec(tensors["noise.mu"], tensors["noise.sigma"], tensors["noise.keep"].bool())
        if "conditional" in meta:
            c = meta["conditional"]
            cond = NoiseTransform(tuple(c["shape"]), c["smin"], c["smax"], granularity="conditional")
            noise.conditional = cond.load_tensors(tensors, "noise.conditional.").eval().requires_grad_(False)
    return Attacker(decoder.eval(), noise, k=int(meta.get("k", 1)))
