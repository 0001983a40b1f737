"""Measuring what users deploy: top-1 on held-out data, wall-clock latency, bytes on disk.

Latency is timed with warm-up, a fixed thread count and several rounds; when a
reference (the base model) is given, candidate and reference rounds interleave so
that both see the same machine state, and the spread of the rounds is kept.
"""

from __future__ import annotations

from typing import Callable

import torch

from autocompress.data import Split
from autocompress.device import Latency, time_interleaved

__all__ = ["Latency", "count_params", "measure_latency", "module_predictor", "recalibrated_top1", "top1"]


def measure_latency(
    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]], example: torch.Tensor, *,
    warmup: int = 20, repeats: int = 50, rounds: int = 5, threads: int = 2,
    sync: Callable[[], None] | None = None,
) -> dict[str, Latency]:
    """Times predictors in interleaved rounds on the same input (:func:`autocompress.device.timing.time_interleaved`).

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
        return time_interleaved(predictors, example, warmup=warmup, repeats=repeats, rounds=rounds, sync=sync)
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


def recalibrated_top1(model: torch.nn.Module, train: Split, val: Split, *, calibrate: int = 256,
                      evaluate: int = 1024, batch_size: int = 64, seed: int = 0) -> float:
    """A cheap score of an untrained structure: top-1 after BatchNorm recalibration (as FastNAS scores
    subnets), in percent.

    A copy of ``model`` has its BatchNorm statistics reset and re-estimated (a cumulative average)
    on ``calibrate`` training images, with every other layer in evaluation mode, then is read on a
    fixed, class-stratified sample of ``evaluate`` validation images. Pruning shifts each layer's
    activation statistics; a structure whose statistics are re-estimated reads closer to what it keeps.

    Args:
        model: The structure (left unchanged).
        train: Images to re-estimate the statistics on (no augmentation).
        val: Images to read top-1 on.
    """
    import copy

    net = copy.deepcopy(model).eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every calibration batch
        m.train()
    with torch.no_grad():
        for inputs, _ in train.batches(batch_size, shuffle=True, seed=seed, limit=calibrate):
            net(inputs)
    return top1(module_predictor(net), val.sample(evaluate, seed=seed), batch_size=256)
