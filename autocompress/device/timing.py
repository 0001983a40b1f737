"""The timing loop behind every latency figure, in the search and on an agent.

It imports neither torch nor Ray: :func:`autocompress.measure.accuracy.measure_latency` wraps it for
torch predictors in the search, and ``autocompress agent`` runs it on the target device with
numpy predictors, so both report the same figures in the same way.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable


@dataclass
class Latency:
    """Latency of one predictor in milliseconds.

    Attributes:
        median_ms: Median over every timed call of every round.
        p10_ms / p90_ms: 10th and 90th percentile of the calls.
        min_ms: Fastest call.
        round_medians_ms: Median of each round (their spread shows drift between rounds).
        cv: Coefficient of variation of the round medians.
        calls: Timed calls in all.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    round_medians_ms: list[float]
    cv: float
    calls: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Latency":
        """Rebuilds one from :meth:`to_dict`'s output, checking every field (it may come from a network).

        Raises:
            ValueError: A field is missing, extra, of the wrong type, negative or not finite.
        """
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            raise ValueError(f"latency figures need exactly the fields {', '.join(names)}")

        def number(value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"not a non-negative finite number: {value!r}")
            return float(value)

        medians = data["round_medians_ms"]
        if not isinstance(medians, list) or not medians:
            raise ValueError("round_medians_ms must be a non-empty list")
        calls = data["calls"]
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be a positive integer, not {calls!r}")
        return cls(number(data["median_ms"]), number(data["p10_ms"]), number(data["p90_ms"]), number(data["min_ms"]),
                   [number(m) for m in medians], number(data["cv"]), calls)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def paired_ratio(latency: Latency, reference: Latency) -> tuple[float, float, float]:
    """``latency`` over ``reference`` paired by round (both timed in the same interleaved run): the median
    of the per-round ratios of their round medians, and its lower and upper quartiles. Pairing cancels
    the machine's drift between rounds; the quartiles show how finely the two can be told apart."""
    ratios = sorted(a / b for a, b in zip(latency.round_medians_ms, reference.round_medians_ms))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]


def summarise(times: list[list[float]]) -> Latency:
    """:class:`Latency` of per-round lists of call times in seconds."""
    flat = [t for rnd in times for t in rnd]
    medians = [statistics.median(r) for r in times]
    mean = statistics.fmean(medians)
    cv = statistics.pstdev(medians) / mean if len(medians) > 1 and mean > 0 else 0.0
    ms = lambda v: round(v * 1e3, 5)  # noqa: E731
    return Latency(ms(statistics.median(flat)), ms(_quantile(flat, 0.1)), ms(_quantile(flat, 0.9)),
                   ms(min(flat)), [ms(m) for m in medians], round(cv, 4), len(flat))


def time_interleaved(predictors: dict[str, Callable[[Any], Any]], example: Any, *, warmup: int = 20,
                     repeats: int = 50, rounds: int = 5, sync: Callable[[], None] | None = None) -> dict[str, Latency]:
    """Times predictors in interleaved rounds on the same input.

    Each predictor gets ``warmup`` untimed calls, then every round times ``repeats`` calls of
    each predictor in turn, the order reversed every other round, so that all of them see the
    same machine state. Threads are fixed by the caller (when the predictors are built).

    Args:
        predictors: ``{name: predictor}``.
        example: The input (its batch size is the measured batch size).
        warmup: Untimed calls per predictor before the first round.
        repeats: Timed calls per predictor per round.
        rounds: Rounds.
        sync: Called after each call (e.g. ``torch.cuda.synchronize``) so timing covers the work.

    Returns:
        ``{name: Latency}``.
    """
    for predict in predictors.values():
        for _ in range(warmup):
            predict(example)
        if sync:
            sync()
    times: dict[str, list[list[float]]] = {name: [] for name in predictors}
    for r in range(rounds):
        order = list(predictors.items())
        if r % 2:
            order.reverse()
        for name, predict in order:
            rnd = []
            for _ in range(repeats):
                start = time.perf_counter()
                predict(example)
                if sync:
                    sync()
                rnd.append(time.perf_counter() - start)
            times[name].append(rnd)
    return {name: summarise(t) for name, t in times.items()}
