"""Objectives, feasibility and the non-dominated front of finished trials.

The objectives are chosen per run (``objectives:`` in the run config, 2 to 4 of
:data:`OBJECTIVE_KEYS`); accuracy is maximised, every other figure minimised. Functions here take
the objectives as *metric keys* (``accuracy``, ``latency_ms``, ``size_mb``, ``params``, ``macs``,
``memory_mb``, ``energy_mj``), the keys of a record's ``metrics``; :func:`metric_keys` maps the
config's names to them.
"""

from __future__ import annotations

from typing import Any, Iterable

from autocompress.config import OBJECTIVE_KEYS

DEFAULT_OBJECTIVES = ("accuracy", "latency", "size")
OBJECTIVES = ("accuracy", "latency_ms", "size_mb")  # metric keys of the default objectives
DIRECTIONS = ("maximize", "minimize", "minimize")
BUDGET_METRICS = {"max_latency_ms": "latency_ms", "max_size_mb": "size_mb", "max_params": "params",
                  "max_macs": "macs", "max_memory_mb": "memory_mb", "max_energy_mj": "energy_mj"}
"""Budget fields that cap one figure, and the metric each caps."""
_CONSTRAINT_NAMES = {"max_latency_ms": "latency", "max_size_mb": "size", "max_params": "params", "max_macs": "macs",
                     "max_memory_mb": "memory", "max_energy_mj": "energy"}
TIMED = frozenset({"latency_ms", "energy_mj", "memory_mb"})
"""Figures measured with noise (timed, or read from a counter): compared with a margin where one is given."""


def metric_keys(objectives: Iterable[str]) -> tuple[str, ...]:
    """Metric keys of objective names (``latency`` -> ``latency_ms``); metric keys pass through."""
    keys = set(OBJECTIVE_KEYS.values())
    return tuple(k if k in keys else OBJECTIVE_KEYS[k] for k in objectives)


def directions(objectives: Iterable[str] = OBJECTIVES) -> tuple[str, ...]:
    """Optuna directions of objectives (names or metric keys): accuracy maximised, the rest minimised."""
    return tuple("maximize" if k == "accuracy" else "minimize" for k in metric_keys(objectives))


def required_metrics(config) -> set[str]:
    """Metric keys a complete trial must have for this run: its objectives and every figure with a budget."""
    needed = set(metric_keys(config.objectives))
    for field, key in BUDGET_METRICS.items():
        if getattr(config.budget, field, None) is not None:
            needed.add(key)
    return needed


def objective_values(record: dict[str, Any], objectives: Iterable[str] = OBJECTIVES) -> list[float]:
    """The objective values of a finished record, in the order of ``objectives`` (metric keys).

    Raises:
        KeyError / TypeError: The record lacks one (older records have no ``macs``, ``memory_mb``, ...).
    """
    m = record["metrics"]
    return [float(m[k]) for k in metric_keys(objectives)]


def has_objectives(record: dict[str, Any], objectives: Iterable[str] = OBJECTIVES) -> bool:
    """Whether a record carries a value for every objective (older ones may lack the newer figures)."""
    m = record.get("metrics") or {}
    return all(m.get(k) is not None for k in metric_keys(objectives))


def constraints(record: dict[str, Any], budget, base_accuracy: float) -> dict[str, float]:
    """Constraint values (feasible when every value is <= 0) of a finished record.

    Each is the violation relative to its limit (``latency / max - 1``, ``size / max - 1``,
    ``macs / max - 1``, ... ``(floor - accuracy) / floor``), so ms, MB, MACs and percentage points
    weigh alike when the sampler ranks infeasible trials by their summed violation. The latency
    ratio to the base (``metrics.latency_vs_base``) counts where it was measured, i.e. for every
    trial; a capped figure the record does not hold (``None``: not measured yet) adds no constraint.
    """
    m = record["metrics"]
    out = {}
    for field, key in BUDGET_METRICS.items():
        limit = getattr(budget, field, None)
        if limit is not None and m.get(key) is not None:
            out[_CONSTRAINT_NAMES[field]] = m[key] / limit - 1.0
    if budget.max_latency_vs_base is not None and m.get("latency_vs_base") is not None:
        out["latency_vs_base"] = m["latency_vs_base"] / budget.max_latency_vs_base - 1.0
    if budget.max_accuracy_drop is not None:
        floor = max(base_accuracy - budget.max_accuracy_drop, 1e-6)
        out["accuracy"] = (floor - m["accuracy"]) / floor
    order = ["latency", "latency_vs_base", "size", "params", "macs", "memory", "energy", "accuracy"]
    return {k: out[k] for k in order if k in out}


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


def front(records: list[dict[str, Any]], objectives: Iterable[str] = OBJECTIVES) -> list[dict[str, Any]]:
    """The records non-dominated in ``objectives`` (ties kept), the most accurate first.

    Args:
        records: Finished records, each holding every objective in its ``metrics``.
        objectives: Names or metric keys; the run's own.
    """
    keys = metric_keys(objectives)
    dirs = directions(keys)
    values = [objective_values(r, keys) for r in records]
    keep = [
        r for i, r in enumerate(records)
        if not any(dominates(values[j], values[i], dirs) for j in range(len(records)) if j != i)
    ]
    order = dict.fromkeys(("accuracy", *keys))  # the most accurate first, then by the objectives in turn
    return sorted(keep, key=lambda r: tuple(-r["metrics"][k] if k == "accuracy" else r["metrics"][k] for k in order))


def _hv2d(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        return _hv2d(points, ref)
    pts = sorted(points)
    volume = 0.0
    for i, p in enumerate(pts):  # slices along the first objective, each a (d-1)-dimensional hypervolume
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper > p[0]:
            volume += (upper - p[0]) * _hv([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume


def hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Exact hypervolume dominated by ``points`` (all objectives minimised) up to ``reference``.

    Points not strictly better than the reference in every objective add nothing. Any number of
    objectives (slicing along the first, recursively; fronts here hold tens of points).
    """
    pts = [tuple(p) for p in points if all(v < r for v, r in zip(p, reference))]
    if not pts:
        return 0.0
    return _hv(pts, tuple(reference))


def normalised_points(records: list[dict[str, Any]], base: dict[str, Any], accuracy_floor_pp: float = 5.0
                      ) -> tuple[list[list[float]], list[float]]:
    """Front points in a base-relative, all-minimised space, and the reference point (1, 1, 1).

    accuracy → (base − acc) / floor_pp, latency → latency / base latency, size → size / base size;
    the reference point is the base's latency and size and an accuracy ``accuracy_floor_pp`` below
    the base's, so a model counts only if it is at once faster, smaller and not that much worse.
    """
    pts = [[(base["accuracy"] - r["metrics"]["accuracy"]) / accuracy_floor_pp,
            r["metrics"]["latency_ms"] / base["latency_ms"], r["metrics"]["size_mb"] / base["size_mb"]]
           for r in records]
    return pts, [1.0, 1.0, 1.0]
