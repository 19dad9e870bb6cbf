"""The privacy objective of :meth:`veil.protection.Protected.fit`: what the noise is rewarded for.

- ``"mean"`` (the default): ``-log mean sigma`` (:func:`veil.noise.privacy_loss`): more noise anywhere
  the task does not need it.
- ``"adversarial"``: ``-log mean sigma + adversary_weight * attacker.privacy_term(release, x)``, a min-max
  game against an attacker that learns *during* the fit (one :meth:`Adversary.step` per fit step on the
  step's own release, fresh noise), so sigma moves to where the attacker finds the input, not merely
  where the task is indifferent. The attacker is passed in (dependency injection: ``veil.protection``
  sits below ``veil.audit`` and does not import it); veil's own is
  :class:`veil.audit.online.OnlineAttacker`::

      from veil.audit.online import OnlineAttacker
      p.fit(batches, steps=200, objective="adversarial", attacker=OnlineAttacker.for_protected(p, images))

Any object with the four methods of :class:`Adversary` works (e.g. a linkage attacker, another decoder).
Its ``state_dict`` goes into ``fit``'s checkpoint, so a resumed fit resumes the game where it stopped.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from veil.errors import InputError

OBJECTIVES = ("mean", "adversarial")


@runtime_checkable
class Adversary(Protocol):
    """An attacker that trains alongside :meth:`Protected.fit` (``fit(objective="adversarial")``)."""

    def step(self, release: Tensor, x: Tensor) -> float:
        """Train the attacker once on ``release`` (detached, the step's release) of inputs ``x``.

        Returns its loss relative to what it scores with no information (1.0: it learned nothing), logged
        by fit as ``attack_vs_floor``.
        """
        ...

    def privacy_term(self, release: Tensor, x: Tensor) -> Tensor:
        """A scalar >= 0 the noise minimises (falls as the attacker's loss rises); gradient into ``release``
        only (the attacker itself is not moved by it)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_objective(objective: str | None, attacker: Any) -> str:
    """``"mean"`` or ``"adversarial"``, checked against the attacker given (one line on a mismatch)."""
    name = objective if objective is not None else ("adversarial" if attacker is not None else "mean")
    if name not in OBJECTIVES:
        raise InputError(f"fit: objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    if name == "mean" and attacker is not None:
        raise InputError("fit: attacker= is used only with objective='adversarial'; drop one of them")
    if name == "adversarial" and attacker is None:
        raise InputError(
            "fit(objective='adversarial') needs attacker=, e.g. "
            "veil.audit.online.OnlineAttacker.for_protected(p, images)"
        )
    if name == "adversarial" and not isinstance(attacker, Adversary):
        raise InputError(
            f"fit: attacker must have step, privacy_term, state_dict and load_state_dict, "
            f"got {type(attacker).__name__}"
        )
    return name
