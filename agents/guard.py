"""The divergence guard: limits on the learner's losses, its gradient norm and the memory state's
norm, checked after every segment (``guard:`` in configs/config.yaml).

NaN or Inf in a loss, a gradient or the memory always stops a run (``NonFiniteError``, raised where
it happens); these limits catch a blow-up before the values overflow, e.g. ``agent.lr=10`` drives
the value loss to 1e8 and the memory norm to 1e5 while every number is still finite.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class DivergenceError(RuntimeError):
    """A guarded quantity passed its limit: ``quantity`` (a config key), ``value``, ``limit``, ``step``."""

    def __init__(self, quantity: str, value: float, limit: float, step: int) -> None:
        super().__init__(f"{quantity} reached {value:.3g} (limit guard.{_KEYS[quantity]}={limit:g}) at env step {step}; "
                         "lower agent.lr, or set guard.on_divergence=rollback to continue from the last checkpoint "
                         "with a lower learning rate")
        self.quantity, self.value, self.limit, self.step = quantity, value, limit, step


_KEYS = {"losses/policy": "max_loss", "losses/value": "max_loss", "losses/grad_norm": "max_grad_norm",
         "memory state norm": "max_state_norm"}


@dataclass(frozen=True)
class DivergenceGuard:
    """The limits (None: no limit) and what to do when one is passed."""

    max_loss: float | None
    max_grad_norm: float | None
    max_state_norm: float | None
    on_divergence: str  # stop | rollback
    rollback_lr_factor: float  # rollback: the learning rate is multiplied by this
    max_rollbacks: int  # rollbacks before a divergence stops the run after all

    def __post_init__(self) -> None:
        if self.on_divergence not in ("stop", "rollback"):
            raise ValueError(f"guard.on_divergence={self.on_divergence!r}: choose stop or rollback")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DivergenceGuard:
        """From the ``guard:`` section of the run config."""
        optional = lambda key: None if cfg[key] is None else float(cfg[key])  # noqa: E731
        return cls(optional("max_loss"), optional("max_grad_norm"), optional("max_state_norm"),
                   str(cfg["on_divergence"]), float(cfg["rollback_lr_factor"]), int(cfg["max_rollbacks"]))

    def check(self, step: int, stats: Mapping[str, Any], state_norms: Callable[[], list[float]]) -> None:
        """Raise :class:`DivergenceError` if a learner statistic of this segment (``stats``: the
        ``losses/*`` of the update) or a layer's memory-state norm passed its limit."""
        checks = [("losses/policy", self.max_loss, abs), ("losses/value", self.max_loss, abs),
                  ("losses/grad_norm", self.max_grad_norm, abs)]
        for key, limit, measure in checks:
            if limit is not None and key in stats:
                value = measure(float(stats[key]))
                if not value <= limit or math.isnan(value):
                    raise DivergenceError(key, value, limit, step)
        if self.max_state_norm is not None:
            worst = max(state_norms(), default=0.0)
            if not worst <= self.max_state_norm:
                raise DivergenceError("memory state norm", worst, self.max_state_norm, step)
