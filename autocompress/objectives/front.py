"""Objectives, feasibility and the non-dominated front of finished trials.

The objectives are chosen per run (``objectives:`` in the run config, 2 to 4 of
:data:`OBJECTIVE_KEYS`); accuracy is maximised, every other figure minimised. Functions here take
the objectives as *metric keys* (``accuracy``, ``latency_ms``, ``size_mb``, ``params``, ``macs``,
``memory_mb``, ``energy_mj``), the keys of a record's ``metrics``; :func:`metric_keys` maps the
config's names to them.

Latency is timed in windows that may lie hours apart and drift (seen: the base read 1.07 ms at the
start of a night and 1.57 ms beside its last trial), so :func:`front` compares it as the ratio to
the base timed beside each model where every record has one, and a structure's artefacts by one
ratio: the median over every measurement of that structure.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from autocompress.config import OBJECTIVE_KEYS

DEFAULT_OBJECTIVES = ("accuracy", "latency", "size")
OBJECTIVES = ("accuracy", "latency_ms", "size_mb")  # metric keys of the default objectives
DIRECTIONS = ("maximize", "minimize", "minimize")
TIMED = frozenset({"latency_ms", "energy_mj", "memory_mb"})
"""Figures measured with noise (timed, or read from a counter): compared with a margin where one is given."""


def metric_keys(objectives: Iterable[str]) -> tuple[str, ...]:
    """Metric keys of objective names (``latency`` -> ``latency_ms``); metric keys pass through."""
    keys = set(OBJECTIVE_KEYS.values())
    return tuple(k if k in keys else OBJECTIVE_KEYS[k] for k in objectives)


def directions(objectives: Iterable[str] = OBJECTIVES) -> tuple[str, ...]:
    """Optuna directions of objectives (names or metric keys): accuracy maximised, the rest minimised."""
    return tuple("maximize" if k == "accuracy" else "minimize" for k in metric_keys(objectives))


def latency_ratio(metrics: Mapping[str, Any]) -> float | None:
    """The latency ratio to the base the budget is judged on: the median over every measurement of the
    structure (``latency_vs_base_pooled``) where the run has one, else this measurement's."""
    pooled = metrics.get("latency_vs_base_pooled")
    return pooled if pooled is not None else metrics.get("latency_vs_base")


def _figures_of(record: Any) -> Mapping[str, Any]:
    """The measured figures of a record by metric key: a typed trial record's ``metrics``
    (:class:`autocompress.trial.TrialRecord`, read through its mapping view) or a plain dict's
    ``["metrics"]``; empty when it has none (a failed trial)."""
    m = record.get("metrics") if isinstance(record, Mapping) else getattr(record, "metrics", None)
    return {} if m is None else m


def objective_values(record: Any, objectives: Iterable[str] = OBJECTIVES) -> list[float]:
    """The objective values of a finished record, in the order of ``objectives`` (metric keys).

    Args:
        record: A typed trial record or a dict holding the figures in ``metrics``.
        objectives: Names or metric keys.

    Raises:
        KeyError / TypeError: The record lacks one (older records have no ``macs``, ``memory_mb``, ...).
    """
    m = _figures_of(record)
    return [float(m[k]) for k in metric_keys(objectives)]


def has_objectives(record: Any, objectives: Iterable[str] = OBJECTIVES) -> bool:
    """Whether a record (typed, or a dict with ``metrics``) carries a value for every objective (older
    ones may lack the newer figures)."""
    m = _figures_of(record)
    return all(m.get(k) is not None for k in metric_keys(objectives))


def dominates(a: list[float], b: list[float], directions=DIRECTIONS) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def front(records: list[Any], objectives: Iterable[str] = OBJECTIVES) -> list[Any]:
    """The records non-dominated in ``objectives`` (ties kept), the most accurate first.

    Artefacts of one structure (the same ``latency_key``: base, runtime and structural steps) run
    alike and weigh alike, so only the most accurate of them stands for it. Latency is compared as
    the ratio to the base timed beside each model where every record has one (else in ms), and a
    structure's as the latest median over all its measurements (``latency_vs_base_pooled`` of its
    record pooled from the most): milliseconds from windows hours apart, or one window's ratio,
    would let drift or noise decide (seen: a less accurate copy of a structure on the front for
    having been timed in a quicker window).

    Args:
        records: Finished records (typed trial records or dicts), each holding every objective in its ``metrics``.
        objectives: Names or metric keys; the run's own.
    """
    keys = metric_keys(objectives)
    dirs = directions(keys)
    figures = [_figures_of(r) for r in records]
    best: dict[str, int] = {}
    for i, m in enumerate(figures):
        key = m.get("latency_key")
        if key is not None and (key not in best or m["accuracy"] > figures[best[key]]["accuracy"]):
            best[key] = i
    kept = [i for i, m in enumerate(figures) if m.get("latency_key") is None or best[m["latency_key"]] == i]
    latency = _comparable_latency(figures) if "latency_ms" in keys else None
    values = {i: [latency[i] if k == "latency_ms" and latency else float(figures[i][k]) for k in keys] for i in kept}
    keep = [i for i in kept if not any(dominates(values[j], values[i], dirs) for j in kept if j != i)]
    order = [keys.index(k) if k in keys else None for k in dict.fromkeys(("accuracy", *keys))]
    return [records[i] for i in sorted(keep, key=lambda i: tuple(
        -figures[i]["accuracy"] if at is None else (-values[i][at] if keys[at] == "accuracy" else values[i][at])
        for at in order))]


def _comparable_latency(figures: list[Mapping[str, Any]]) -> list[float] | None:
    """Each record's latency as a ratio to the base timed beside it, a structure's the same for all its
    artefacts (the pooled ratio counted over the most measurements); ``None`` when a record has no
    ratio (runs from before it, or a record without a base timed beside it): milliseconds then."""
    ratios = [latency_ratio(m) for m in figures]
    if any(r is None for r in ratios):
        return None
    latest: dict[str, tuple[tuple[int, int], float]] = {}
    for i, m in enumerate(figures):
        key = m.get("latency_key")
        if key is not None:
            rank = (m.get("latency_pooled_from") or 1, i)
            if key not in latest or rank > latest[key][0]:
                latest[key] = (rank, ratios[i])
    return [latest[m["latency_key"]][1] if m.get("latency_key") in latest else ratios[i]
            for i, m in enumerate(figures)]


def hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Exact hypervolume dominated by ``points`` (all objectives minimised) up to ``reference``.

    Points not strictly better than the reference in every objective add nothing. Any number of
    objectives. Computed by Optuna's own WFG implementation, the one its samplers and
    ``plot_hypervolume_history`` use; it lives in the private ``optuna._hypervolume`` (Optuna 5 has
    no public equivalent).
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    pts = [p for p in points if all(v < r for v, r in zip(p, reference))]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.asarray(pts, dtype=float), np.asarray(reference, dtype=float)))


def normalised_points(records: list[dict[str, Any]], base: dict[str, Any], accuracy_floor_pp: float = 5.0
                      ) -> tuple[list[list[float]], list[float]]:
    """Front points in a base-relative, all-minimised space, and the reference point (1, 1, 1).

    accuracy → (base − acc) / floor_pp, latency → latency / base latency, size → size / base size;
    the reference point is the base's latency and size and an accuracy ``accuracy_floor_pp`` below
    the base's, so a model counts only if it is at once faster, smaller and not that much worse.
    """
    pts = [[(base["accuracy"] - _figures_of(r)["accuracy"]) / accuracy_floor_pp,
            _figures_of(r)["latency_ms"] / base["latency_ms"], _figures_of(r)["size_mb"] / base["size_mb"]]
           for r in records]
    return pts, [1.0, 1.0, 1.0]
