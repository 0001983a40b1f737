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
    """Constraint values (feasible when every value is <= 0) of a finished record."""
    m = record["metrics"]
    out = {}
    if budget.max_latency_ms is not None:
        out["latency"] = m["latency_ms"] - budget.max_latency_ms
    if budget.max_size_mb is not None:
        out["size"] = m["size_mb"] - budget.max_size_mb
    if budget.max_accuracy_drop is not None:
        out["accuracy"] = (base_accuracy - budget.max_accuracy_drop) - m["accuracy"]
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
