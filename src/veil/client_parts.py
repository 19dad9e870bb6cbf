"""The FaceBoxes client's head: rebuilt from the base checkpoint plus the transform, then verified.

A FaceBoxes transform stores only what training changed (the noise, and a fine-tuned head block if any), so
its head is the base model cut at the transform's split with that block loaded. Whatever builds it (here,
or a caller's ``head=``), the client runs it only if its fingerprint (:func:`veil.artifact.state_fingerprint`)
is the ``head_sha256`` the transform records (inside its release digest): a head from other weights, another
split or an edited block is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from veil.artifact import Transform, check_release, load_transform, state_fingerprint
from veil.errors import ServingError


def head_from_weights(weights: str | Path) -> nn.Module:
    """FaceBoxes' clean head at its default split (for ``allow_clean`` use only), channels-last."""
    from veil.models import create_model, get_spec, split_model

    head, _ = split_model(create_model("faceboxes", weights), get_spec("faceboxes").default_split)
    return head.to(memory_format=torch.channels_last)


def check_head(tr: Transform, head: nn.Module, built: bool) -> None:
    """Refuse ``head`` unless its fingerprint is the one ``tr`` records (transforms without one pass)."""
    want = tr.meta.get("head_sha256")
    if not want or state_fingerprint(head) == want:
        return
    where = tr.path or "transform"
    if built:
        raise ServingError(
            f"the head rebuilt for {where} (split {tr.meta.get('split')!r}) has fingerprint "
            f"{state_fingerprint(head)[:12]}…, not the recorded head_sha256 {str(want)[:12]}…: pass the "
            "base weights it was trained with (--weights) or restore the transform"
        )
    raise ServingError(
        f"the head given is not the one transform {tr.path or ''} was made for (split "
        f"{tr.meta.get('split')!r}, its fine-tuned block): pass weights=... and let the client build it"
    )


def transform_parts(
    transform: Transform | str | Path,
    head: nn.Module | None,
    weights: str | Path | None,
    expect_release: str | None,
) -> tuple[Transform, nn.Module]:
    """The transform and the head that goes with it: built from it, or ``head``; checked against it."""
    from veil.faceboxes.pipeline import transform_head

    tr = transform if isinstance(transform, Transform) else load_transform(transform, weights)
    check_release(tr, expect_release, str(tr.path or "transform"))
    if head is None:
        if weights is None:
            raise ServingError(
                "VeilClient(transform=...) needs weights=... (the base checkpoint) for its head"
            )
        head = transform_head(weights, tr)
        check_head(tr, head, built=True)
        return tr, head
    check_head(tr, head, built=False)
    return tr, head
