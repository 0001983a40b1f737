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
* ``front`` (the default): ``budget``, and also stop a trial that cannot reach the Pareto front
  of the run's objectives. Every objective but accuracy is known before it trains (the structure
  probe: latency, size, params, MACs, and memory and energy where measured), so it is hopeless
  when a feasible finished trial is at least as accurate as its best case and at least as good
  in every other objective — better by ``latency_margin`` in the measured ones (latency, energy,
  memory), no larger in the counted ones (size, params, MACs): it could never add to the front.
  The multi-objective form of "far behind finished trials".
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

from autocompress.objectives import OBJECTIVES, TIMED

_UNITS = {"latency_ms": ("{:.3f} ms"), "size_mb": "{:.2f} MB", "params": "{:,.0f} params", "macs": "{:,.0f} MACs",
          "memory_mb": "{:.1f} MB memory", "energy_mj": "{:.3f} mJ"}


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
        objectives: The run's objectives as metric keys (default ``accuracy, latency_ms, size_mb``).
        front: ``[*objective values, latency / base or None]`` of the feasible finished trials on the
            front, the values in the order of ``objectives``.
        position: ``(*values of the objectives other than accuracy, latency / base or None)`` of this
            trial's structure, measured before training; ``None`` = unknown (no ``front`` stop).
        latency_margin: How much better (fraction) a front point must be in a measured objective
            (latency, energy, memory) to count as better, so measurement noise in the probe does not
            stop a trial. Latencies are compared as ratios to the base timed beside each where both
            have one, in ms otherwise.
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
    objectives: tuple[str, ...] = OBJECTIVES

    def position_of(self, metrics: dict) -> tuple | None:
        """:attr:`position` from a structure probe's metrics (``None`` when one objective is missing)."""
        values = [metrics.get(k) for k in self.objectives if k != "accuracy"]
        if any(v is None for v in values):
            return None
        return (*values, metrics.get("latency_vs_base"))

    def _beaten_by(self, best: float) -> str | None:
        """Why a front point dominates this trial at its best case ``best``, or ``None``."""
        others = [k for k in self.objectives if k != "accuracy"]
        mine = list(self.position)
        ratio = mine[len(others)] if len(mine) > len(others) else None
        for row in self.front:
            values = dict(zip(self.objectives, row))
            theirs = row[len(self.objectives)] if len(row) > len(self.objectives) else None
            if "accuracy" in values and values["accuracy"] < best:
                continue
            notes = []
            for key, my_value in zip(others, mine):
                other = values[key]
                if key == "latency_ms" and ratio is not None and theirs is not None:
                    # ratios to the base timed beside each are immune to the machine's speed drifting between the two
                    my_value, other = ratio, theirs
                    notes.append(f"{other:.3f}x vs {my_value:.3f}x the base")
                limit = my_value * (1 - self.latency_margin) if key in TIMED else my_value
                if other is None or other > limit:
                    break
            else:
                def show(vals: dict) -> str:
                    return ", ".join(_UNITS[k].format(vals[k]) for k in others)
                acc = f"{values['accuracy']:.2f}% at " if "accuracy" in values else ""
                return (f"cannot reach the front: at best {best:.2f}% at {show(dict(zip(others, mine)))}; "
                        f"a finished trial has {acc}{show(values)}" + (f" ({notes[0]})" if notes else ""))
        return None

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

    def check(self, step: int, accuracy: float, last: int | None = None, final: bool = False,
              whole: bool = False) -> None:
        """Raises :class:`StopTrial` when the rule says the trial should stop.

        Args:
            step: The step (epoch) just finished.
            accuracy: Top-1 % on the validation slice after it.
            last: The step the fine-tune will end at; only finished curves ending there are compared.
            final: The trial's training is over (no gain left to allow for): a trial that cannot reach
                the floor or the front as it is stops before it is quantized and measured. ``halving``
                does not apply (the fine-tune it would save has been spent).
            whole: ``accuracy`` was read on the whole validation split (the floor's own), not the
                sample: no sampling noise or bias is allowed for.
        """
        if self.mode == "none":
            return
        gain = 0.0 if final else max(self.max_gain(step, last), 0.0)
        best = accuracy + gain if whole else self._best(accuracy, gain)
        if self.floor is not None and best < self.floor:
            raise StopTrial(step, accuracy, f"cannot reach the accuracy floor {self.floor:.2f}%: {accuracy:.2f}% at "
                                            f"step {step}{' (training over)' if final else ''}, at best {best:.2f}% "
                                            f"(+{gain:.2f} pp seen after it, "
                                            f"{'whole validation split' if whole else 'sample noise and bias allowed for'})",
                            final=final)
        if self.mode in ("front", "halving") and self.position is not None:
            beaten = self._beaten_by(best)
            if beaten:
                raise StopTrial(step, accuracy, beaten, rule="front", final=final)
        if self.mode == "halving" and not final:
            peers = [acc for curve in self._peers(last) for s, acc in curve if s == step]
            if len(peers) >= self.min_history and accuracy < statistics.median(peers):
                raise StopTrial(step, accuracy, f"behind finished trials: {accuracy:.2f}% at step {step} "
                                                f"< median {statistics.median(peers):.2f}% of {len(peers)}", rule="halving")
