"""The device budget, judged in one place.

Each question about the budget has one answer here:

* :func:`constraints`: the constraint values Optuna is told for a finished record (and
  :func:`stopped_constraints` for a trial stopped early); :func:`is_feasible` reads them.
* :func:`within_budget`: whether measured figures meet the budget (inside a trial, where the
  accuracy floor may not be known).
* :func:`structure_verdict`: whether a structure, measured before any training, can ever meet it.
* :func:`proxy_verdict`: whether one that can is worth its fine-tune, beside the others probed.
* :func:`probe_problem` and :func:`refusal`: the pure part of the check before a search, given the
  base's figures and those probed for the most compressed structure.
* :func:`required_metrics`: the figures a complete trial must carry for the run.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

from autocompress.objectives.front import latency_ratio, metric_keys

BUDGET_METRICS = {"max_latency_ms": "latency_ms", "max_size_mb": "size_mb", "max_params": "params",
                  "max_macs": "macs", "max_memory_mb": "memory_mb", "max_energy_mj": "energy_mj"}
"""Budget fields that cap one figure, and the metric each caps."""
_CONSTRAINT_NAMES = {"max_latency_ms": "latency", "max_size_mb": "size", "max_params": "params", "max_macs": "macs",
                     "max_memory_mb": "memory", "max_energy_mj": "energy"}
_CONSTRAINT_ORDER = ("latency", "latency_vs_base", "size", "params", "macs", "memory", "energy", "accuracy")
LATENCY_NOISE = 1.25
"""Before a search, a probed timed figure this many times over its limit cannot be noise."""
STOPPED_VIOLATION = 0.01
"""Constraint value of an early-stopped trial that violates no budget: infeasible, barely."""


class Unmet(NamedTuple):
    """A budget field the most compressed configuration cannot meet, and why (one line)."""

    field: str
    text: str


def caps_figures(budget) -> bool:
    """Whether the budget caps any figure besides accuracy (so the most compressed structure is worth probing)."""
    return budget.max_latency_vs_base is not None or any(getattr(budget, f) is not None for f in BUDGET_METRICS)


def required_metrics(config) -> set[str]:
    """Metric keys a complete trial must have for this run: its objectives and every figure with a budget."""
    needed = set(metric_keys(config.objectives))
    for field, key in BUDGET_METRICS.items():
        if getattr(config.budget, field, None) is not None:
            needed.add(key)
    return needed


def constraints(record: Mapping[str, Any], budget, base_accuracy: float) -> dict[str, float]:
    """Constraint values (feasible when every value is <= 0) of a finished record.

    Each is the violation relative to its limit (``latency / max - 1``, ``size / max - 1``,
    ``macs / max - 1``, ... ``(floor - accuracy) / floor``), so ms, MB, MACs and percentage points
    weigh alike when the sampler ranks infeasible trials by their summed violation. The latency
    ratio to the base (``metrics.latency_vs_base``, or its median over every measurement of the
    structure, ``latency_vs_base_pooled``, where the run has one) counts where it was measured, i.e.
    for every trial; a capped figure the record does not hold (``None``: not measured yet) adds no constraint.

    Args:
        record: Holds the figures in ``metrics``.
        budget: The run's ``BudgetConfig``.
        base_accuracy: The base's top-1, for the accuracy floor.

    Returns:
        ``{name: value}`` in a fixed order: latency, latency_vs_base, size, params, macs, memory,
        energy, accuracy (each only where the budget caps it and the figure is known).
    """
    m = record["metrics"]
    out = {}
    for field, key in BUDGET_METRICS.items():
        limit = getattr(budget, field, None)
        if limit is not None and m.get(key) is not None:
            out[_CONSTRAINT_NAMES[field]] = m[key] / limit - 1.0
    ratio = latency_ratio(m)
    if budget.max_latency_vs_base is not None and ratio is not None:
        out["latency_vs_base"] = ratio / budget.max_latency_vs_base - 1.0
    if budget.max_accuracy_drop is not None:
        floor = max(base_accuracy - budget.max_accuracy_drop, 1e-6)
        out["accuracy"] = (floor - m["accuracy"]) / floor
    return {k: out[k] for k in _CONSTRAINT_ORDER if k in out}


def is_feasible(constraint_values: Mapping[str, float]) -> bool:
    """Whether a record with these constraint values (from :func:`constraints`) meets the budget."""
    return all(v <= 0 for v in constraint_values.values())


def within_budget(metrics: Mapping[str, Any], *, budget, floor: float | None) -> bool:
    """Whether measured ``metrics`` meet the budget, the accuracy floor only where it is known.

    Args:
        metrics: A trial's figures.
        budget: The run's ``BudgetConfig``.
        floor: The accuracy floor (base top-1 minus the allowed drop); ``None`` = not known here.
    """
    drop = budget.max_accuracy_drop
    if floor is None or drop is None:
        budget, base_accuracy = budget.model_copy(update={"max_accuracy_drop": None}), 0.0
    else:
        base_accuracy = floor + drop
    return is_feasible(constraints({"metrics": metrics}, budget, base_accuracy))


def stopped_constraints(record: Mapping[str, Any], budget, base_accuracy: float) -> dict[str, float]:
    """Constraint values of a trial stopped early: its probed figures and the accuracy it stopped at.

    A capped figure the probe lacks violates nothing. A trial within every budget at its stop is
    still behind others, so it gets ``stopped`` = :data:`STOPPED_VIOLATION` and stays infeasible.
    """
    m = dict(record.get("probe") or {})
    m["accuracy"] = record["stopped"]["accuracy"]
    for field, key in BUDGET_METRICS.items():
        if m.get(key) is None:
            m[key] = getattr(budget, field) or 0.0
    m.setdefault("latency_vs_base", budget.max_latency_vs_base)
    cons = constraints({"metrics": m}, budget, base_accuracy)
    if is_feasible(cons):
        cons["stopped"] = STOPPED_VIOLATION
    return cons


def fixed_verdict(metrics: Mapping[str, Any], budget) -> str | None:
    """Which budget a measured artefact breaks by its structure alone, or ``None``: size, params and
    MACs, which no training changes and no timing noise blurs (an artefact of the same structure,
    quantizer and runtime breaks it too)."""
    return next(iter(_structure_misses(metrics, budget).values()), None)


def _structure_misses(metrics: Mapping[str, Any], budget) -> dict[str, str]:
    misses = {}
    if budget.max_size_mb is not None and metrics.get("size_mb") is not None and metrics["size_mb"] > budget.max_size_mb:
        misses["size"] = f"size {metrics['size_mb']:.3f} MB > budget {budget.max_size_mb} MB"
    if budget.max_params is not None and metrics.get("params") is not None and metrics["params"] > budget.max_params:
        misses["params"] = f"params {metrics['params']:,} > budget {budget.max_params:,}"
    if budget.max_macs is not None and metrics.get("macs") is not None and metrics["macs"] > budget.max_macs:
        misses["macs"] = f"MACs {metrics['macs']:,} > budget {budget.max_macs:,.0f}"
    return misses


def structure_verdict(metrics: Mapping[str, Any], budget, latency_margin: float) -> str | None:
    """Why a structure (measured before any training) can never meet the budget, or ``None``.

    Size, params and MACs are fixed by the structure and compared exactly; latency, its ratio to the
    base, memory and energy are measured, so they get ``latency_margin`` (``0.1`` = 10 %) for noise.
    """
    fixed = _structure_misses(metrics, budget)
    if "size" in fixed:
        return f"{fixed['size']} before fine-tuning"
    margin = 1 + latency_margin
    if budget.max_latency_ms is not None and metrics["latency_ms"] > budget.max_latency_ms * margin:
        return (f"latency {metrics['latency_ms']:.3f} ms > budget {budget.max_latency_ms} ms "
                f"(+{latency_margin:.0%} margin) before fine-tuning")
    ratio = latency_ratio(metrics)
    if budget.max_latency_vs_base is not None and ratio is not None and ratio > budget.max_latency_vs_base * margin:
        return (f"latency {ratio:.3f}x the base > budget {budget.max_latency_vs_base}x "
                f"(+{latency_margin:.0%} margin) before fine-tuning")
    if fixed:
        return next(iter(fixed.values()))
    for field, key, unit in (("max_memory_mb", "memory_mb", "MB memory"), ("max_energy_mj", "energy_mj", "mJ")):
        limit, value = getattr(budget, field), metrics.get(key)
        if limit is not None and value is not None and value > limit * margin:
            return f"{value:.3f} {unit} > budget {limit} {unit} (+{latency_margin:.0%} margin) before fine-tuning"
    return None


def proxy_verdict(metrics: Mapping[str, Any], proxy: float | None, others: Iterable[Mapping[str, Any]], *,
                  budget, latency_margin: float, gate: float | None) -> str | None:
    """Why a structure that meets the budget does not earn a fine-tune, or ``None``.

    It does not when another probed structure that meets the budget too, is no larger and no slower
    (within ``latency_margin``) scores a proxy more than ``gate`` points higher: fine-tuning the
    rival is the better use of the time.

    Args:
        metrics: The structure's probed figures.
        proxy: Its proxy score (``None``: never gated).
        others: Other probes (``metrics``, ``proxy`` and ``trial`` each).
        budget: The run's ``BudgetConfig``.
        latency_margin: Latency noise allowed when comparing speed (``0.1`` = 10 %).
        gate: Points of proxy a rival must lead by (``None``: no gate).
    """

    def speed(m: Mapping[str, Any]) -> tuple[str, float | None]:
        ratio = latency_ratio(m)
        return ("x", ratio) if ratio is not None else ("ms", m.get("latency_ms"))

    unit, mine = speed(metrics)
    if gate is None or proxy is None or mine is None or metrics.get("size_mb") is None:
        return None
    best = None
    for other in others:
        m, score = other.get("metrics") or {}, other.get("proxy")
        their_unit, theirs = speed(m)
        if (score is None or score <= proxy + gate or m.get("size_mb") is None or m["size_mb"] > metrics["size_mb"]
                or their_unit != unit or theirs is None or theirs > mine * (1 + latency_margin)
                or structure_verdict(m, budget, latency_margin)):
            continue
        if best is None or score > best["proxy"]:
            best = other
    if best is None:
        return None
    return (f"proxy {proxy:.1f} % is {best['proxy'] - proxy:.1f} points below trial {best.get('trial')}'s structure "
            f"({best['proxy']:.1f} %), which is no larger and no slower: not worth a fine-tune "
            f"(search.proxy_gate {gate:g})")


def probe_problem(budget, probe: Mapping[str, Any], base: Mapping[str, Any], *, desc: str, runtime: str,
                  threads: int) -> Unmet | None:
    """Which budget figure the most compressed configuration cannot meet on ``runtime``, or ``None``.

    Size, params and MACs are judged exactly; latency, its ratio to the base, memory and energy only
    when over by :data:`LATENCY_NOISE`. The ratio is judged only on the base's own runtime.

    Args:
        budget: The run's ``BudgetConfig``.
        probe: Figures of the most compressed structure (untrained) on ``runtime``.
        base: The base's figures (its ``runtime`` is the reference one).
        desc: The configuration in words (``prune=channel_prune, quantize=int8_static``).
        runtime: The runtime it was measured on.
        threads: The measurement's thread count, named in a latency message.
    """
    m, b = probe, base
    if budget.max_size_mb is not None and m["size_mb"] > budget.max_size_mb:
        return Unmet("budget.max_size_mb", f"{budget.max_size_mb} MB cannot be met: the most compressed "
                     f"configuration ({desc}) is {m['size_mb']:.3f} MB on {runtime} (base {b['size_mb']:.3f} MB)")
    if budget.max_latency_ms is not None and m["latency_ms"] > LATENCY_NOISE * budget.max_latency_ms:
        return Unmet("budget.max_latency_ms", f"{budget.max_latency_ms} ms cannot be met: the most compressed "
                     f"configuration ({desc}) measures {m['latency_ms']:.3f} ms on {runtime} "
                     f"(base {b['latency_ms']:.3f} ms on {b['runtime']}) with {threads} threads")
    if (budget.max_latency_vs_base is not None and runtime == b["runtime"]
            and m["latency_ms"] > LATENCY_NOISE * budget.max_latency_vs_base * b["latency_ms"]):
        return Unmet("budget.max_latency_vs_base", f"{budget.max_latency_vs_base}x the base cannot be met: "
                     f"the most compressed configuration ({desc}) measures {m['latency_ms'] / b['latency_ms']:.2f}x "
                     f"the base's {b['latency_ms']:.3f} ms on {runtime}")
    for field, key, noise, fmt in (("max_params", "params", 1.0, "{:,.0f} params"),
                                   ("max_macs", "macs", 1.0, "{:,.0f} MACs"),
                                   ("max_memory_mb", "memory_mb", LATENCY_NOISE, "{:.2f} MB"),
                                   ("max_energy_mj", "energy_mj", LATENCY_NOISE, "{:.3f} mJ")):
        limit, value = getattr(budget, field), m.get(key)
        if limit is not None and value is not None and value > noise * limit:
            of_base = f" (base {fmt.format(b[key])})" if b.get(key) is not None else ""
            return Unmet(f"budget.{field}", f"{fmt.format(limit)} cannot be met: the most compressed configuration "
                         f"({desc}) has {fmt.format(value)} on {runtime}{of_base}")
    return None


def refusal(problems: Iterable[Unmet], *, probed: int, dropped: int) -> str | None:
    """The one-line refusal of a run whose budget no runtime can meet, or ``None`` to go on.

    Args:
        problems: One :class:`Unmet` per probed runtime that cannot meet the budget.
        probed: Runtimes whose most compressed configuration was measured.
        dropped: Runtimes left out of the check (the probe timed out): any of them might meet it.
    """
    problems = list(problems)
    if not probed or dropped or len(problems) < probed:
        return None
    return f"{problems[0].field}: " + "; ".join(p.text for p in problems)


def vs_base(m: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    """Change vs the base: accuracy in pp, every other figure as how many times lower (``None`` where unknown).

    The speed-up is the inverse of the latency ratio the budget judges (:func:`latency_ratio`: to the
    base timed beside the model) where ``m`` holds one, not the ratio of two figures timed in windows
    that may lie hours apart.
    """
    out = {"accuracy_pp": round(m["accuracy"] - base["accuracy"], 4)}
    for key, name in (("latency_ms", "latency_x"), ("size_mb", "size_x"), ("params", "params_x"), ("macs", "macs_x"),
                      ("memory_mb", "memory_x"), ("energy_mj", "energy_x")):
        mine, theirs = m.get(key), base.get(key)
        out[name] = round(theirs / mine, 3) if mine and theirs is not None else None
    ratio = latency_ratio(m)
    if ratio:
        out["latency_x"] = round(1.0 / ratio, 3)
    return out
