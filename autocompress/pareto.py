"""Objectives, feasibility and the non-dominated front of finished trials."""

from __future__ import annotations

from typing import Any

OBJECTIVES = ("accuracy", "latency_ms", "size_mb")
DIRECTIONS = ("maximize", "minimize", "minimize")


def objective_values(record: dict[str, Any]) -> list[float]:
    """``[accuracy %, latency ms, size MB]`` of a finished record."""
    m = record["metrics"]
    return [float(m[k]) for k in OBJECTIVES]


def constraints(record: dict[str, Any], budget, base_accuracy: float) -> dict[str, float]:
    """Constraint values (feasible when every value is <= 0) of a finished record.

    Each is the violation relative to its limit (``latency / max - 1``, ``size / max - 1``,
    ``(floor - accuracy) / floor``), so ms, MB and percentage points weigh alike when the
    sampler ranks infeasible trials by their summed violation. The latency ratio to the base
    (``metrics.latency_vs_base``) counts where it was measured, i.e. for every trial.
    """
    m = record["metrics"]
    out = {}
    if budget.max_latency_ms is not None:
        out["latency"] = m["latency_ms"] / budget.max_latency_ms - 1.0
    if budget.max_latency_vs_base is not None and m.get("latency_vs_base") is not None:
        out["latency_vs_base"] = m["latency_vs_base"] / budget.max_latency_vs_base - 1.0
    if budget.max_size_mb is not None:
        out["size"] = m["size_mb"] / budget.max_size_mb - 1.0
    if budget.max_accuracy_drop is not None:
        floor = max(base_accuracy - budget.max_accuracy_drop, 1e-6)
        out["accuracy"] = (floor - m["accuracy"]) / floor
    return out


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


def front(records: list[dict[str, Any]], directions=DIRECTIONS) -> list[dict[str, Any]]:
    """The non-dominated records (ties kept), ordered by accuracy, best first."""
    values = [objective_values(r) for r in records]
    keep = [
        r for i, r in enumerate(records)
        if not any(dominates(values[j], values[i], directions) for j in range(len(records)) if j != i)
    ]
    return sorted(keep, key=lambda r: (-r["metrics"]["accuracy"], r["metrics"]["latency_ms"]))


def _hv2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Exact hypervolume dominated by ``points`` (all objectives minimised) up to ``reference``.

    Points not strictly better than the reference in every objective add nothing.
    Works for 2 or 3 objectives (slicing along the first).
    """
    pts = [tuple(p) for p in points if all(v < r for v, r in zip(p, reference))]
    if not pts:
        return 0.0
    if len(reference) == 2:
        return _hv2d(pts, tuple(reference))
    if len(reference) != 3:
        raise ValueError("hypervolume supports 2 or 3 objectives")
    pts.sort()
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else reference[0]
        if upper > p[0]:
            volume += (upper - p[0]) * _hv2d([(q[1], q[2]) for q in pts[: i + 1]], (reference[1], reference[2]))
    return volume


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
