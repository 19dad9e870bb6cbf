"""Options and builders shared by several commands."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from veil.assets import default_weights
from veil.cli.checks import FloatOpt, check_size
from veil.errors import VeilError
from veil.models.public import FACEBOXES_TASK, ModelEntry

if TYPE_CHECKING:  # torch and the model code load inside the commands: `veil --help` stays fast
    from torch import Tensor, nn

WeightsOpt = typer.Option(
    None,
    "--weights",
    "-w",
    help="Checkpoint: FaceBoxes (.pth; default: $VEIL_WEIGHTS, else the one veil ships), or weights= "
    "for another --model's factory.",
    show_default=False,
)


ModelOpt = typer.Option(
    "faceboxes",
    "--model",
    metavar="NAME|PKG.MOD:FACTORY",
    help="The model: a name from `veil models`, or package.module:factory (a callable returning a "
    "torch.nn.Module, taking weights= when --weights is given).",
)


@dataclass
class ModelChoice:
    """``--model`` and ``--weights`` resolved: the registry entry, and the checkpoint to use (if any)."""

    spec: str
    entry: ModelEntry
    weights: Path | None

    @property
    def faceboxes(self) -> bool:
        return self.entry.task == FACEBOXES_TASK

    def build(self) -> nn.Module:
        """The model itself (any task), in eval mode; one-line errors (see ``build_model``)."""
        from veil.models.public import build_model

        return build_model(self.spec, None if self.faceboxes and self.weights is None else self.weights)

    def require_faceboxes(self, command: str) -> Path:
        """The FaceBoxes checkpoint for a face-detection command, or the one line naming the fix."""
        if not self.faceboxes:
            raise VeilError(
                f"veil {command} runs face detectors (task faceboxes); {self.spec} is a {self.entry.task} "
                f"model: protect it with `veil train --model {self.spec} ...` (or veil.protect) and serve it "
                "with `veil serve --transform DIR`"
            )
        assert self.weights is not None  # resolve_model_option gives a FaceBoxes model its checkpoint
        return self.weights


def resolve_model_option(name: str, weights: Path | None) -> ModelChoice:
    """``--model NAME|pkg.mod:factory`` with ``--weights``, checked before anything slow runs.

    Unknown names list the registered ones; a ``pkg.mod:factory`` that fails to import names the module
    and the exception. A FaceBoxes-task model gets ``--weights``, else its registered checkpoint, else
    (the built-in) ``$VEIL_WEIGHTS`` / the shipped one; a named weights file must exist and hold finite
    tensors.
    """
    from veil.models.public import resolve_entry

    entry = resolve_entry(name)
    chosen = weights
    if entry.task == FACEBOXES_TASK and chosen is None:
        if entry.weights is not None:
            chosen = Path(entry.weights)
        elif entry.source == "built-in":
            chosen = resolve_weights(None)
        else:
            raise VeilError(f"model {entry.name!r} (task faceboxes) names no checkpoint: pass --weights")
    if chosen is not None:
        check_finite_weights(chosen)
    return ModelChoice(name.strip(), entry, chosen)


def tail_source(model: str, weights: Path | None, transform: Path | None, command: str) -> Path | None:
    """``veil serve`` / ``export triton``: the FaceBoxes checkpoint to build the tails from, or None when
    ``transform`` is a protected model's (it carries its tail; a named ``--model`` must be its model)."""
    from veil.serve.spec import is_generic

    if transform is not None and is_generic(transform):
        if model.strip().lower() == "faceboxes":  # the default: the transform alone decides
            if weights is not None:
                raise VeilError("a protected model's transform carries its tail (tail.pt): drop --weights")
            return None
        check_transform_model(resolve_model_option(model, weights), transform)
        return None
    choice = resolve_model_option(model, weights)
    if not choice.faceboxes:
        raise VeilError(
            f"veil {command} builds FaceBoxes tails from --weights; {choice.spec} is a {choice.entry.task} "
            f"model: protect it with `veil train --model {choice.spec} ...` (or veil.protect) and give its "
            f"transform: veil {command} --transform DIR"
        )
    return choice.weights


def check_transform_model(choice: ModelChoice, transform: Path) -> None:
    """One line unless ``choice`` builds the very model ``transform`` was protected from (fingerprint)."""
    import json

    from veil.artifact import state_fingerprint

    want = str(json.loads((transform / "transform.json").read_text()).get("model_fingerprint", ""))
    have = state_fingerprint(choice.build())
    if have != want:
        raise VeilError(
            f"--model {choice.spec} (fingerprint {have[:12]}…) is not the model {transform} was made for "
            f"({want[:12]}…): give the --model and --weights it was protected from, or leave --model out"
        )


def check_finite_weights(path: Path) -> Path:
    """``path`` if it is a readable checkpoint of finite tensors (a ``.pth`` state dict), else one line.

    Files that are no state dict (a factory may read anything) are left to the factory.
    """
    from veil.errors import CheckpointError
    from veil.models.checkpoint import check_weights_file, read_state_dict

    check_weights_file(path)
    try:
        state = read_state_dict(path)
    except CheckpointError:
        return path  # not a torch state dict: the factory reads it (and fails in one line if it cannot)
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]!r}): the training that "
            "wrote it diverged; use another --weights"
        )
    return path


TilesOpt = typer.Option(
    1,
    "--tiles",
    min=1,
    help="Also detect in K x K overlapping zoomed crops (K*K + 1 releases per image), cut after the "
    "frame's large faces are painted over: finds faces below the model's smallest anchor, e.g. crowds. "
    "1: the full frame only.",
)


def int_list(text: str, option: str) -> list[int]:
    """``"1,2,4"`` as [1, 2, 4], or a one-line error naming ``option``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VeilError(f"{option} must be comma-separated whole numbers, got {text!r}") from None


def resolve_weights(weights: Path | None) -> Path:
    """``--weights``, else ``$VEIL_WEIGHTS``, else the package's FaceBoxes.pth (SHA-256 checked)."""
    if weights is None:
        env = os.environ.get("VEIL_WEIGHTS")
        if not env:
            return default_weights()
        weights = Path(env)
    return weights


ThreadsOpt = typer.Option(None, min=1, help="CPU threads for PyTorch.")
SizeOpt = typer.Option(
    None,
    callback=check_size,
    help="Fixed square input size, a multiple of 32 (default: 1024, or the transform's).",
)
ResizeOpt = FloatOpt(  # the resulting network input is checked per image (veil.imageio.target_size)
    None,
    low=0,
    low_open=True,
    help="Keep each image's scale times this factor instead (the input stays within 4096 px a side "
    "and 4096 x 4096 pixels).",
)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def parse_size(
    size: int | None, resize: float | None
) -> tuple[tuple[int, int] | Literal["auto"] | None, float]:
    """``--resize`` keeps the image's own scale times the factor; ``--size`` fixes a square input;
    neither means "auto": the transform's training size, else the model's reference size (1024)."""
    if resize is not None:
        if resize <= 0:
            raise VeilError(f"--resize must be > 0, got {resize}")
        return None, resize
    if size is None:
        return "auto", 1.0
    if size < 32 or size % 32:
        raise VeilError(f"--size must be a positive multiple of 32, got {size}")
    return (size, size), 1.0


def resolve_transform(transform: Path | None, alpha: float | None) -> Path | None:
    """``--transform DIR`` (or a shipped transform's name, e.g. ``faceboxes-rdcl-alpha0.8``) as given, or
    the shipped transform at the default split for ``--alpha`` (the reference knob)."""
    if transform is not None and alpha is not None:
        raise VeilError("give either --transform or --alpha, not both")
    from veil.faceboxes.shipped import resolve_alpha, shipped_by_name, shipped_transforms

    if alpha is None:
        if transform is not None and not transform.exists() and len(transform.parts) == 1:
            shipped = shipped_by_name().get(transform.name)
            if shipped is not None:
                return shipped
        return transform
    chosen, others = resolve_alpha(alpha)
    also = ", ".join(f"--transform {name}" for name in others)
    if chosen is None:
        have = ", ".join(f"{a:g}" for a in sorted(shipped_transforms())) or "none"
        raise VeilError(
            f"no shipped transform for --alpha {alpha:g} at the default split (shipped: {have}"
            + (f"; at {alpha:g} on another split: {also}" if also else "")
            + "); pass your own with --transform DIR, or train one with `veil train`"
        )
    if others:
        typer.echo(f"--alpha {alpha:g}: {chosen.name} (the default split); also shipped: {also}", err=True)
    return chosen


ExpectReleaseOpt = typer.Option(
    None,
    "--expect-release",
    metavar="SHA",
    help="With --server: the release_sha256 your audit names (12+ hex digits); any other release is "
    "refused before anything is sent.",
)
CaCertOpt = typer.Option(
    None,
    "--ca-cert",
    help="With an https:// or grpcs:// --server: the CA certificate (PEM) to verify it against "
    "(default: the system's roots).",
)


def remote_detector(
    server: str,
    weights: Path | None,
    transform: Path | None,
    *,
    allow_clean: bool = False,
    protocol: str | None = None,
    access_token: str | None = None,
    threshold: float = 0.05,
    expect_release: str | None = None,
    ca_cert: Path | None = None,
    sticky_key: bytes | None = None,
) -> Callable[[Sequence[Tensor]], list[Tensor]]:
    """``detect`` through a Triton server: head and noise here, tail there; clean only if allowed.

    The head comes from the transform (its split and fine-tuned block); ``expect_release`` pins the
    audited release digest; ``https://``/``grpcs://`` servers are verified (``ca_cert``), never downgraded.
    """
    from veil.artifact import load_transform
    from veil.client import VeilClient
    from veil.faceboxes.detect import PostProcess
    from veil.faceboxes.registry import create_model, get_spec, split_model

    w = resolve_weights(weights)
    post = PostProcess(threshold=threshold)
    if transform is None:
        if not allow_clean:
            raise VeilError(
                "--server without --transform would send clean activations: add --allow-clean to do so"
            )
        head, _ = split_model(create_model("faceboxes", w), get_spec("faceboxes").default_split)
        if expect_release is not None:
            raise VeilError("--expect-release needs --transform: only a transform records its release")
        if sticky_key is not None:
            raise VeilError("--sticky-key needs --transform: clean activations carry no noise to seed")
        client = VeilClient(
            server,
            protocol,
            head=head.eval(),
            allow_clean=True,
            access_token=access_token,
            post=post,
            ca_cert=ca_cert,
        )
    else:
        tr = load_transform(transform, w, expect_release=expect_release)
        if tr.meta.get("diagnostic") and not allow_clean:
            raise VeilError(
                f"{transform} is a diagnostic copy ({tr.meta['diagnostic']}) that hides what its noise "
                "no longer adds: send a real transform, or add --allow-clean to do so knowingly"
            )
        client = VeilClient(
            server,
            protocol,
            transform=tr,
            weights=w,
            allow_clean=allow_clean and bool(tr.meta.get("diagnostic")),
            access_token=access_token,
            post=post,
            ca_cert=ca_cert,
            sticky_key=sticky_key,
        )
    client.check_ready()
    return client.detect
