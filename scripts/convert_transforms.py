"""Convert transform directories written by an older veil (``veil-transform/1``) to the current format.

    python scripts/convert_transforms.py src/veil/faceboxes/transforms/* \
        --weights ../shared/weights/faceboxes/FaceBoxes.pth

Only ``transform.json`` changes: the tensors file is verified against its recorded SHA-256 and kept byte for
byte. The JSON gains ``sigma_floor``, ``head_sha256`` (the fingerprint of the head the client runs, from
``--weights``), the new ``release_sha256`` (release spec + release tensors) and ``meta_sha256``; the old
release digest is kept under ``converted_from`` so audits that quote it can be matched.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from safetensors.torch import load_file

from veil.artifact import (
    FORMAT,
    META,
    OLD_FORMATS,
    TENSORS,
    _build_noise,
    _head_fingerprint,
    _release_sha256,
    load_transform,
    meta_digest,
    release_spec,
    release_tensors,
)
from veil.errors import VeilError
from veil.models.checkpoint import sha256_file


def convert(path: Path, weights: Path) -> str:
    """Rewrite ``path``'s JSON in the current format; returns the new release digest."""
    meta = json.loads((path / META).read_text())
    if meta.get("format") not in OLD_FORMATS:
        raise VeilError(f"{path}: format {meta.get('format')!r} is not one this script converts")
    if sha256_file(path / TENSORS) != meta.get("tensors_sha256"):
        raise VeilError(f"{path / TENSORS}: SHA-256 does not match {META}: restore it before converting")
    if meta.get("base_weights_sha256") and sha256_file(weights) != meta["base_weights_sha256"]:
        raise VeilError(f"{weights} is not the base checkpoint {path} was trained for")
    tensors = load_file(str(path / TENSORS))
    noise = _build_noise(path, meta, tensors)
    head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")} or None
    record = dict(meta)
    old_release = record.pop("release_sha256", None)
    record.update(
        {
            "format": FORMAT,
            "sigma_floor": noise.sigma_floor(),
            "head_sha256": _head_fingerprint(meta, head, weights),
            "converted_from": {"format": meta["format"], "release_sha256": old_release},
        }
    )
    record["release_sha256"] = _release_sha256(release_spec(record), release_tensors(noise, head))
    record["meta_sha256"] = meta_digest(record)
    tmp = path / f".{META}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / META)
    load_transform(path, weights)  # verifies what was written
    return str(record["release_sha256"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transforms", type=Path, nargs="+")
    ap.add_argument("--weights", type=Path, required=True, help="the base checkpoint they were trained for")
    args = ap.parse_args()
    try:
        for path in args.transforms:
            old = json.loads((path / META).read_text()).get("release_sha256")
            print(f"{path}: release {old} -> {convert(path, args.weights)}")
    except (VeilError, OSError, ValueError) as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
