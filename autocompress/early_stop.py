"""Multi-fidelity stopping on recorded learning curves.

Optuna's pruners do not support multi-objective studies, so the rule lives here and works on
the curves that fine-tuning plugins report (``ctx.report(step, accuracy)``):

* ``none``: never stop.
* ``budget``: stop when the accuracy reached at a step, plus the largest gain any finished trial
  made from that step to its end, stays below the accuracy floor (base accuracy minus the allowed
  drop): the trial cannot become feasible. Until ``min_history`` finished curves reached that step
  the gain assumed is ``default_gain_pp`` (30 pp: fine-tunes with a one-cycle schedule gain much
  after their first epoch, so the rule only stops hopeless trials before it has learned more).
* ``halving``: ``budget``, and also stop a trial below the median of finished trials at the same
  step once at least ``min_history`` of them reached it (successive-halving style).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


class StopTrial(Exception):
    """Raised from ``ctx.report`` to end a trial's fine-tune early."""

    def __init__(self, step: int, accuracy: float, reason: str, rule: str = "floor") -> None:
        super().__init__(reason)
        self.step, self.accuracy, self.reason, self.rule = step, accuracy, reason, rule
        self.stage: str | None = None  # filled in by the trial pipeline
        self.plugin: str | None = None


@dataclass
class StopRule:
    """A stopping rule for one trial.

    Attributes:
        mode: ``none``, ``budget`` or ``halving``.
        floor: Accuracy floor in percent (``None`` = no accuracy budget).
        history: Curves of finished trials, each ``[[step, accuracy], ...]``.
        default_gain_pp: Gain assumed possible after a step until ``min_history`` finished curves reached it.
        min_history: Finished curves needed at a step before their gains (``budget``) or their
            median (``halving``) are used.
    """

    mode: str = "none"
    floor: float | None = None
    history: list[list[list[float]]] = field(default_factory=list)
    default_gain_pp: float = 30.0
    min_history: int = 3

    def max_gain(self, step: int) -> float:
        gains = []
        for curve in self.history:
            at = [acc for s, acc in curve if s == step]
            if at and curve:
                gains.append(curve[-1][1] - at[0])
        return max(gains) if len(gains) >= self.min_history else self.default_gain_pp

    def check(self, step: int, accuracy: float) -> None:
        """Raises :class:`StopTrial` when the rule says the trial should stop."""
        if self.mode == "none":
            return
        if self.floor is not None:
            gain = max(self.max_gain(step), 0.0)
            if accuracy + gain < self.floor:
                raise StopTrial(step, accuracy, f"cannot reach the accuracy floor {self.floor:.2f}%: "
                                                f"{accuracy:.2f}% at step {step}, at most +{gain:.2f} pp seen after it")
        if self.mode == "halving":
            peers = [acc for curve in self.history for s, acc in curve if s == step]
            if len(peers) >= self.min_history and accuracy < statistics.median(peers):
                raise StopTrial(step, accuracy, f"behind finished trials: {accuracy:.2f}% at step {step} "
                                                f"< median {statistics.median(peers):.2f}% of {len(peers)}", rule="halving")
