"""Measuring what users deploy: top-1 on held-out data, wall-clock latency, bytes on disk.

Latency is timed with warm-up, a fixed thread count and several rounds; when a
reference (the base model) is given, candidate and reference rounds interleave so
that both see the same machine state, and the spread of the rounds is kept.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from autocompress.data import Split


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


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _summarise(times: list[list[float]]) -> Latency:
    flat = [t for rnd in times for t in rnd]
    medians = [statistics.median(r) for r in times]
    mean = statistics.fmean(medians)
    cv = statistics.pstdev(medians) / mean if len(medians) > 1 and mean > 0 else 0.0
    ms = lambda v: round(v * 1e3, 5)  # noqa: E731
    return Latency(ms(statistics.median(flat)), ms(_quantile(flat, 0.1)), ms(_quantile(flat, 0.9)),
                   ms(min(flat)), [ms(m) for m in medians], round(cv, 4), len(flat))


def measure_latency(
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]], example: torch.Tensor, *,
    warmup: int = 20, repeats: int = 50, rounds: int = 5, threads: int = 2,
    sync: Callable[[], None] | None = None,
) -> dict[str, Latency]:
    """Times predictors in interleaved rounds on the same input.

    Args:
        predictors: ``{name: predictor}``; all are timed round by round, in turn.
        example: The input (its batch size is the measured batch size).
        warmup: Untimed calls per predictor before the first round.
        repeats: Timed calls per predictor per round.
        rounds: Rounds.
        threads: torch intra-op threads during timing (runtimes fix their own at load).
        sync: Called after each call (e.g. ``torch.cuda.synchronize``) so timing covers the work.

    Returns:
        ``{name: Latency}``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
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
        return {name: _summarise(t) for name, t in times.items()}
    finally:
        torch.set_num_threads(previous)


def top1(predict: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int = 256,
         limit: int | None = None) -> float:
    """Top-1 accuracy in percent.

    Raises:
        FloatingPointError: The predictor gave NaN or infinite logits.
    """
    correct = total = 0
    for inputs, labels in split.batches(batch_size, limit=limit):
        logits = predict(inputs)
        if not torch.isfinite(logits).all():
            raise FloatingPointError("model produced NaN or infinite logits")
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)


def module_predictor(model: torch.nn.Module, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor for an eager module (evaluation mode, no grad)."""
    model.eval()
    device = torch.device(device)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).float().cpu()

    return predict


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a module (the structure, whatever their precision)."""
    return sum(p.numel() for p in model.parameters())
