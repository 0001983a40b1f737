"""Multi-fidelity stopping on recorded learning curves.

Optuna's pruners do not support multi-objective studies, so the rule lives here and works on
the curves that fine-tuning plugins report (``ctx.report(step, accuracy)``):

* ``none``: never stop.
* ``budget``: stop when the trial's best case stays below the accuracy floor (base accuracy minus
  the allowed drop): it cannot become feasible. The best case is the accuracy reached at a step,
  plus the largest gain a finished trial on the same schedule (ending at the same step) made
  after it, plus two standard deviations of the validation slice's sampling noise, corrected for
  how the base scores on the slice vs the whole split. Until ``min_history`` such curves reached
  the step nothing is stopped (``default_gain_pp`` = ``None``): a one-cycle fine-tune can climb
  from chance to the top after its first epoch (10 % -> 99 % on digits), so any gain assumed
  without curves would be a guess, and trials it stopped would never add the curves that
  correct it.
* ``front`` (the default): ``budget``, and also stop a trial that cannot reach the Pareto front.
  Its latency and size are known before it trains (the structure probe), so it is hopeless when
  a feasible finished trial is at least as accurate as its best case, at least
  ``latency_margin`` faster and no larger: it could never add to the front. The multi-objective
  form of "far behind finished trials".
* ``halving``: ``front``, and also stop a trial below the median of finished trials at the same
  step once at least ``min_history`` of them reached it (successive-halving style; biased
  against heavily pruned trials, which start lower).

After the last epoch of a trial's training the floor and front rules are checked once more,
with no gain left to allow for: a fine-tune that ended out of reach is not quantized and
measured (its curve is whole, so it still counts as history).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


class StopTrial(Exception):
    """Raised from ``ctx.report`` to end a trial's fine-tune early."""

    def __init__(self, step: int, accuracy: float, reason: str, rule: str = "floor", final: bool = False) -> None:
        super().__init__(reason)
        self.step, self.accuracy, self.reason, self.rule, self.final = step, accuracy, reason, rule, final
        self.stage: str | None = None  # filled in by the trial pipeline
        self.plugin: str | None = None


@dataclass
class StopRule:
    """A stopping rule for one trial.

    Attributes:
        mode: ``none``, ``budget``, ``front`` or ``halving``.
        floor: Accuracy floor in percent (``None`` = no accuracy budget).
        history: Curves of finished trials, each ``[[step, accuracy], ...]``.
        default_gain_pp: Gain assumed possible after a step until ``min_history`` finished curves
            reached it; ``None`` (default) = unbounded: no ``budget`` or ``front`` stop before then.
        min_history: Finished curves needed at a step before their gains (``budget``) or their
            median (``halving``) are used.
        front: ``[accuracy %, latency ms, size MB, latency / base or None]`` of the feasible finished
            trials on the front.
        position: ``(latency ms, size MB, latency / base or None)`` this trial's structure measured
            before training; ``None`` = unknown (no ``front`` stop).
        latency_margin: How much faster (fraction) a front point must be to count as faster,
            so latency noise in the probe does not stop a trial. Latencies are compared as ratios
            to the base timed beside each where both have one, in ms otherwise.
        slice_bias: The base's top-1 on the validation slice minus on the whole validation split:
            curves are on the slice, the floor and the front on the whole split.
        slice_size: Images in the slice; an estimate from it is given the benefit of two binomial
            standard deviations (about 3.5 pp at 80 % on 512 images) before anything is stopped.
    """

    mode: str = "none"
    floor: float | None = None
    history: list[list[list[float]]] = field(default_factory=list)
    default_gain_pp: float | None = None
    min_history: int = 3
    front: list[list[float | None]] = field(default_factory=list)
    position: tuple[float, ...] | tuple[float, float, float | None] | None = None
    latency_margin: float = 0.1
    slice_bias: float = 0.0
    slice_size: int = 512

    def _peers(self, last: int | None) -> list[list[list[float]]]:
        """Finished curves on the same schedule: ending at ``last`` (all curves when unknown).

        A one-cycle fine-tune of 3 epochs is at its peak learning rate after epoch 1, one of 2
        epochs already cooling: their accuracy at a step, and the gain after it, differ.
        """
        return [c for c in self.history if c and (last is None or c[-1][0] == last)]

    def max_gain(self, step: int, last: int | None = None) -> float:
        gains = []
        for curve in self._peers(last):
            at = [acc for s, acc in curve if s == step]
            if at:
                gains.append(curve[-1][1] - at[0])
        if len(gains) >= self.min_history:
            return max(gains)
        return math.inf if self.default_gain_pp is None else self.default_gain_pp

    def best_case(self, step: int, accuracy: float, last: int | None = None) -> float:
        """The highest whole-split accuracy the trial can plausibly end at."""
        return self._best(accuracy, max(self.max_gain(step, last), 0.0))

    def _best(self, accuracy: float, gain: float) -> float:
        p = min(max(accuracy / 100.0, 0.0), 1.0)
        noise = 200.0 * math.sqrt(max(p * (1 - p), 0.01) / max(self.slice_size, 1))
        return accuracy - self.slice_bias + gain + noise

    def check(self, step: int, accuracy: float, last: int | None = None, final: bool = False) -> None:
        """Raises :class:`StopTrial` when the rule says the trial should stop.

        Args:
            step: The step (epoch) just finished.
            accuracy: Top-1 % on the validation slice after it.
            last: The step the fine-tune will end at; only finished curves ending there are compared.
            final: The trial's training is over (no gain left to allow for): a trial that cannot reach
                the floor or the front as it is stops before it is quantized and measured. ``halving``
                does not apply (the fine-tune it would save has been spent).
        """
        if self.mode == "none":
            return
        gain = 0.0 if final else max(self.max_gain(step, last), 0.0)
        best = self._best(accuracy, gain)
        if self.floor is not None and best < self.floor:
            raise StopTrial(step, accuracy, f"cannot reach the accuracy floor {self.floor:.2f}%: {accuracy:.2f}% at "
                                            f"step {step}{' (training over)' if final else ''}, at best {best:.2f}% "
                                            f"(+{gain:.2f} pp seen after it, slice noise and bias allowed for)",
                            final=final)
        if self.mode in ("front", "halving") and self.position is not None:
            latency, size, ratio = (*self.position, None)[:3]
            for acc, lat, mb, *rest in self.front:
                theirs = rest[0] if rest else None
                # ratios to the base timed beside each are immune to the machine's speed drifting between the two
                mine, other = (ratio, theirs) if ratio is not None and theirs is not None else (latency, lat)
                if acc >= best and other <= mine * (1 - self.latency_margin) and mb <= size:
                    raise StopTrial(step, accuracy, f"cannot reach the front: at best {best:.2f}% at {latency:.3f} ms, "
                                                    f"{size:.2f} MB; a finished trial has {acc:.2f}% at {lat:.3f} ms, "
                                                    f"{mb:.2f} MB" + (f" ({other:.3f}x vs {mine:.3f}x the base)"
                                                                      if mine is ratio else ""),
                                    rule="front", final=final)
        if self.mode == "halving" and not final:
            peers = [acc for curve in self._peers(last) for s, acc in curve if s == step]
            if len(peers) >= self.min_history and accuracy < statistics.median(peers):
                raise StopTrial(step, accuracy, f"behind finished trials: {accuracy:.2f}% at step {step} "
                                                f"< median {statistics.median(peers):.2f}% of {len(peers)}", rule="halving")
