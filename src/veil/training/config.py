"""What defines a training run: :class:`TrainConfig`, and the checks that refuse what the run would ignore.

Its own module (below the cache, the checkpoints and the loop, which all take a config) so that nothing
in :mod:`veil.training` imports the loop back: the package's imports run one way (import-linter's
``training-layers`` contract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from veil.device import check_device
from veil.errors import InputError
from veil.faceboxes.data.images import GRID_CHOICES, check_grids
from veil.faceboxes.registry import get_spec
from veil.noise import Granularity
from veil.split import head_blocks_available
from veil.training.losses import DISTILL_WEIGHTS, TASKS


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the artifact for reproducibility)."""

    weights: str
    images: list[str]
    alpha: float
    scenes: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # annotated datasets (FDDB or WIDER layout)
    labels_part: str = "all"  # "train": only the half that evaluation's "test" part never sees
    task: str = "distill"  # "multibox" (supervised, needs labels) or "mixed" (both, half the samples boxed)
    label_weight: float = 1.0  # mixed: weight of MultiBox on the boxed samples against distillation
    distill_weights: str = "score"  # face anchors count by clean score, or "uniform" (small faces as much)
    scene_fraction: float = 0.25  # share of samples cropped from scenes (the rest: photo mosaics)
    mosaic_grids: list[int] = field(default_factory=lambda: list(GRID_CHOICES))  # k x k photos per mosaic
    scene_grids: list[int] = field(default_factory=lambda: [1])  # k x k scene crops per scene sample
    privacy: str = "mean"  # "mean": -log mean sigma (Cloak); "relative": -mean log(sigma / channel std);
    # "adversarial": -log mean sigma + adversary_weight * (how far an online decoder beats the mean image)
    privacy_pool: str = "batch"  # conditional: log of the batch's mean sigma, or "request": mean of
    # each request's log mean sigma (no request may stay nearly clean while others carry the noise)
    adversary_weight: float = 1.0
    adversary_photos: int = 256  # photos the online decoder learns from (2000: worse in one run)
    adversary_steps: int = 1  # decoder updates per training step (a stronger chaser)
    adversary_size: int = 0  # input size the online decoder attacks; 0: half of input_size (cheaper)
    adversary_reset: int = 0  # start a fresh online decoder every N steps (0: never)
    model: str = "faceboxes"
    split: str = "inception3"
    train_tail: bool = True
    train_head: bool = False  # also fine-tune the head's last block (the one just before the split)
    head_blocks: int = 1  # with train_head: how many blocks before the split are fine-tuned
    granularity: Granularity = "element"
    input_size: int = 1024
    samples: int = 256
    steps: int = 400
    batch_size: int = 8
    lr_noise: float = 0.05
    lr_tail: float = 3e-5  # small: the tail adapts to the noise without forgetting real scenes
    lr_head: float = 1e-4  # the head's last block (with train_head)
    smax_factor: float = 8.0  # smax = factor x the clean activation's std
    suppress_factor: float = 0.95  # suppress elements whose sigma > factor x smax ...
    suppress_from: float = 0.7  # ... from this fraction of the steps on (the rest adapts to the mask)
    suppress_max: float = 1.0  # ... but never more than this share of the elements (the noisiest)
    seed: int = 0
    log_every: int = 10
    tail_adapter: int = 0  # residual blocks a server-side adapter puts before the tail (0: none)
    init: str = ""  # start from this transform directory (its noise, fine-tuned head and tail)
    freeze_release: bool = False  # with init: only the tail learns; what the client sends stays the same
    device: str = "cpu"  # where the cache, the noise, the tail (and head block, attacker) live: cpu or cuda

    def __post_init__(self) -> None:
        """Refuse option values the run would otherwise silently ignore (CLI and library alike)."""
        from veil.faceboxes.data.labels import PARTS

        check_device(self.device)
        check_numbers(self)
        if self.task not in TASKS:
            raise InputError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "mixed" and not self.labels:
            raise InputError("--task mixed adds MultiBox on annotated boxes: pass --labels DIR")
        if self.label_weight <= 0 or (self.label_weight != 1.0 and self.task != "mixed"):
            raise InputError(
                f"--label-weight must be > 0 and only weighs --task mixed's MultiBox term, got "
                f"{self.label_weight} with --task {self.task}"
            )
        if self.distill_weights not in DISTILL_WEIGHTS:
            raise InputError(f"--distill-weights must be score or uniform, got {self.distill_weights!r}")
        if self.task == "multibox" and (not self.labels or self.images or self.scenes):
            raise InputError("--task multibox trains on boxes: pass --labels DIR (and no --images/--scenes)")
        if not (self.images or self.scenes or self.labels):
            raise InputError("no training data: pass --images DIR (photos), --scenes DIR or --labels DIR")
        if self.privacy not in ("mean", "relative", "adversarial"):
            raise InputError(f"--privacy must be mean, relative or adversarial, got {self.privacy!r}")
        if self.privacy_pool not in ("batch", "request"):
            raise InputError(f"--privacy-pool must be batch or request, got {self.privacy_pool!r}")
        if self.privacy_pool == "request" and self.granularity != "conditional":
            raise InputError(
                "--privacy-pool request needs --granularity conditional (other transforms give every "
                "request the same sigma, so the two pools are equal)"
            )
        if self.privacy_pool == "request" and self.privacy == "relative":
            raise InputError(
                "--privacy-pool request has no effect with --privacy relative (it already takes the log "
                "per element): drop one of them"
            )
        if self.privacy == "adversarial" and self.granularity == "element":
            raise InputError(
                "--privacy adversarial needs --granularity channel or conditional "
                "(photos are attacked at their size)"
            )
        if self.labels_part not in PARTS:
            raise InputError(f"--labels-part must be one of {', '.join(PARTS)}, got {self.labels_part!r}")
        if self.head_blocks != 1 and not self.train_head:
            raise InputError("--head-blocks sets how much --train-head fine-tunes: add --train-head")
        spec = get_spec(self.model)
        if self.train_head and self.split in spec.split_points:
            n = head_blocks_available(spec.build(), self.split)
            if not 1 <= self.head_blocks <= n:
                raise InputError(
                    f"--head-blocks must be between 1 and {n} for --split {self.split} "
                    f"(the head's first block stays frozen), got {self.head_blocks}"
                )
        if self.adversary_size and not 32 <= self.adversary_size <= self.input_size:
            raise InputError(
                f"--adversary-size must be between 32 and the input size ({self.input_size}), "
                f"got {self.adversary_size}"
            )
        if self.adversary_reset < 0:
            raise InputError(f"--adversary-reset must be >= 0 (0: never), got {self.adversary_reset}")
        if self.adversary_reset and self.privacy != "adversarial":
            raise InputError("--adversary-reset restarts the online decoder: it needs --privacy adversarial")
        if self.tail_adapter < 0:
            raise InputError(f"--adapter must be >= 0 (0: none), got {self.tail_adapter}")
        if self.tail_adapter and not self.train_tail:
            raise InputError("--adapter adds layers to the tail that must be trained: add --train-tail")
        if self.adversary_steps < 1:
            raise InputError(f"--adversary-steps must be >= 1, got {self.adversary_steps}")
        if self.samples < 1:
            raise InputError(f"--samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.suppress_max <= 1.0:
            raise InputError(f"--suppress-max is a share of the elements, in [0, 1]; got {self.suppress_max}")
        if not 0.0 <= self.scene_fraction <= 1.0:
            raise InputError(f"--scene-fraction must be in [0, 1], got {self.scene_fraction}")
        check_grids(self.mosaic_grids, self.input_size)
        check_grids(self.scene_grids, self.input_size, "--scene-grids")
        if self.freeze_release and not (self.init and self.train_tail):
            raise InputError(
                "freezing the release leaves only the tail to train: it needs --init DIR and --train-tail"
            )


def check_numbers(cfg: TrainConfig) -> None:
    """Counts, sizes and rates finite and in range (the CLI's options say the same; this covers callers)."""
    counts = {
        "--steps": cfg.steps,
        "--batch-size": cfg.batch_size,
        "--adversary-photos": cfg.adversary_photos,
    }
    counts |= {"log_every": cfg.log_every}
    for option, value in counts.items():
        if value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    if cfg.seed < 0:
        raise InputError(f"--seed must be >= 0, got {cfg.seed}")
    if not 32 <= cfg.input_size <= 4096 or cfg.input_size % 32:
        raise InputError(f"--size must be a multiple of 32 from 32 to 4096, got {cfg.input_size}")
    positive = {"--lr-tail": cfg.lr_tail, "--lr-head": cfg.lr_head, "lr_noise": cfg.lr_noise}
    positive |= {"--smax-factor": cfg.smax_factor, "--suppress-factor": cfg.suppress_factor}
    positive |= {"--label-weight": cfg.label_weight}
    for option, number in positive.items():
        if not (math.isfinite(number) and number > 0):
            raise InputError(f"{option} must be a finite number > 0, got {number}")
    shares = {
        "--alpha": (cfg.alpha, cfg.alpha < 1),
        "suppress_from": (cfg.suppress_from, cfg.suppress_from <= 1),
    }
    shares |= {"--adversary-weight": (cfg.adversary_weight, True)}
    for option, (number, below_top) in shares.items():
        if not (math.isfinite(number) and number >= 0 and below_top):
            top = {"--alpha": " and < 1", "suppress_from": " and <= 1"}.get(option, "")
            raise InputError(f"{option} must be a finite number >= 0{top}, got {number}")
