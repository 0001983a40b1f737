"""Tables for the terminal: a run's front, and the available plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.table import Table

from autocompress.errors import UserError
from autocompress.results.display import describe_choices, short_count
from autocompress.trial import TrialRecord, read_trials

_QTY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_SCALE = {"ms": {"": 1, "ms": 1, "s": 1000, "us": 1e-3}, "mb": {"": 1, "mb": 1, "kb": 1e-3, "gb": 1e3, "b": 1e-6}}
RETIME_FILE = "retime.json"  # written by `autocompress retime` (results.retime)


def parse_quantity(text: str | None, unit: str, flag: str) -> float | None:
    """``"2ms"`` → 2.0, ``"500us"`` → 0.5, ``"4MB"`` → 4.0 (units of ``unit``)."""
    if text is None:
        return None
    match = _QTY.match(text.lower())
    if not match or match.group(2) not in _SCALE[unit]:
        allowed = ", ".join(u for u in _SCALE[unit] if u)
        raise UserError(f"{flag}: {text!r} is not a quantity; use a number with {allowed}")
    return float(match.group(1)) * _SCALE[unit][match.group(2)]


def load_run(run: Path | str) -> tuple[dict, list[TrialRecord]]:
    """``pareto.json`` and the trial records of a run folder.

    Raises:
        UserError: Not a run folder, or a record is malformed or of a newer version (its line is named).
    """
    run = Path(run)
    if not (run / "pareto.json").is_file():
        raise UserError(f"RUN: {run} is not a run folder (no pareto.json)")
    pareto = json.loads((run / "pareto.json").read_text())
    return pareto, read_trials(run)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f} pp"


def _figures(m: dict, energy: bool) -> list[str]:
    """MACs, memory MB and (``energy``) energy mJ of a metrics dict, compactly (``n/a`` where missing)."""
    out = [short_count(m.get("macs")), f"{m['memory_mb']:.1f}" if m.get("memory_mb") is not None else "n/a"]
    if energy:
        out.append(f"{m['energy_mj']:.3f}" if m.get("energy_mj") is not None else "n/a")
    return out


def _precision(m: dict) -> str:
    """``int8 98%``: the artefact's precision and, for a quantized one, the share of its MACs that run in int8."""
    macs, int8 = m.get("macs"), m.get("macs_int8")
    if m["precision"] == "fp32" or int8 is None or not macs:
        return m["precision"]
    return f"{m['precision']} {100 * int8 / macs:.0f}%"


def front_table(run: Path | str, *, sort: str = "accuracy", max_latency_ms: float | None = None,
                max_size_mb: float | None = None) -> Table:
    """The front of a run as a rich table, base row first.

    Besides accuracy, latency, size and params, every row shows MACs, the share of them that runs
    in int8 (beside the precision), peak memory of one inference and energy per inference (``n/a``
    where not measured; the column is left out where no row has it, and the caption says why),
    whatever the run's objectives.

    Args:
        run: The run folder.
        sort: ``accuracy`` (best first), or ``latency``, ``size``, ``params``, ``macs``, ``memory``,
            ``energy`` (lowest first; rows without the figure last).
        max_latency_ms: Only models at most this fast.
        max_size_mb: Only models at most this big.
    """
    from autocompress.objectives import OBJECTIVE_KEYS, OBJECTIVES, metric_keys

    if sort not in OBJECTIVE_KEYS:
        raise UserError(f"--sort: {sort!r} is not allowed; use {', '.join(OBJECTIVE_KEYS)}")
    pareto, records = load_run(run)
    rows = [r for r in pareto["front"]
            if (max_latency_ms is None or r["metrics"]["latency_ms"] <= max_latency_ms)
            and (max_size_mb is None or r["metrics"]["size_mb"] <= max_size_mb)]
    key = OBJECTIVE_KEYS[sort]
    if key == "accuracy":
        rows.sort(key=lambda r: -r["metrics"]["accuracy"])
    else:
        rows.sort(key=lambda r: (r["metrics"].get(key) is None, r["metrics"].get(key) or 0.0))
    objectives = metric_keys(pareto.get("objectives") or OBJECTIVES)
    failed = sum(r.state == "fail" for r in records)
    stopped = sum(r.stopped is not None for r in records)  # fine-tune stops (pruned) and structure stops
    infeasible = sum(r.state == "complete" and not r.feasible for r in records)
    notes = []
    base = pareto.get("base")
    for figure, why in ((base or {}).get("not_measured") or {}).items():
        if figure in ("energy_mj", "macs", "macs_int8"):  # memory's reason is per trial, not the machine's
            notes.append(f"{figure.split('_')[0] if figure != 'macs_int8' else 'int8 MACs'} n/a: {why}")
    if pareto.get("throughput"):
        from autocompress.search import describe

        notes.append("Throughput (last session): " + describe(pareto["throughput"]))
    names = {"accuracy": "accuracy", "latency_ms": "latency", "size_mb": "size", "params": "params", "macs": "MACs",
             "memory_mb": "memory", "energy_mj": "energy"}
    table = Table(title=f"Pareto front of {Path(run).name} ({' x '.join(names[k] for k in objectives)}): "
                        f"{len(rows)} of {len(pareto['front'])} shown; "
                        f"{len(records)} trials, {failed} failed, {stopped} stopped early, {infeasible} infeasible",
                  title_justify="left", caption="\n".join(notes) or None, caption_justify="left")
    energy = any(m.get("energy_mj") is not None for m in [base or {}, *(r["metrics"] for r in rows)])
    retimed = _retimed_cells(run, pareto["front"])
    if retimed:
        notes.append(f"retimed speed-up: the base and the whole front in one interleaved run ({retimed['when']}, "
                     "`autocompress retime`): median of the per-round speed-ups [quartiles]")
    for col in ("trial", "val top-1", "Δ top-1", "test top-1", "latency ms", "speed-up", *(["retimed speed-up"] if retimed else []),
                "size MB", "smaller", "params", "MACs", "mem MB", *(["energy mJ"] if energy else []), "precision",
                "configuration"):
        table.add_column(col, justify="left" if col in {"trial", "configuration", "precision"} else "right")
    if base:
        table.add_row("base", f"{base['accuracy']:.2f}", "", f"{base['test_accuracy']:.2f}",
                      f"{base['latency_ms']:.3f}", "1.00x", *(["1.00x"] if retimed else []),
                      f"{base['size_mb']:.3f}", "1.00x",
                      f"{base['params']:,}", *_figures(base, energy), _precision(base),
                      f"{base['runtime']}, no compression", style="dim")
    for r in rows:
        m, v = r["metrics"], r.get("vs_base") or {}
        table.add_row(str(r["number"]), f"{m['accuracy']:.2f}", _pct(v.get("accuracy_pp")),
                      f"{m['test_accuracy']:.2f}" if m.get("test_accuracy") is not None else "n/a",
                      f"{m['latency_ms']:.3f}", f"{v.get('latency_x') or 0:.2f}x",
                      *([retimed["cells"].get(r["number"], "n/a")] if retimed else []),
                      f"{m['size_mb']:.3f}", f"{v.get('size_x') or 0:.2f}x", f"{m['params']:,}", *_figures(m, energy),
                      _precision(m), describe_choices(r["choices"]))
    return table


def _retimed_cells(run: Path | str, front: list[dict]) -> dict | None:
    """``{"when", "cells": {trial: "2.4x [2.3, 2.6]"}}`` (speed-up over the base, retimed) from
    ``RUN/retime.json`` when it covers ``front``, the run's current front; ``None`` otherwise (absent,
    stale, or a file of a run from elsewhere that does not parse)."""
    try:
        data = json.loads((Path(run) / RETIME_FILE).read_text())
        if sorted(r["number"] for r in front) != data["front"]:
            return None
        cells = {int(row["trial"]): f"{1 / float(row['paired_vs_base']):.2f}x [{1 / float(row['paired_p75']):.2f}, "
                                    f"{1 / float(row['paired_p25']):.2f}]"
                 for row in data["rows"] if row.get("trial") is not None}
        return {"when": str(data["date"])[:16].replace("T", " "), "cells": cells}
    except (OSError, KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return None


def plugins_table(plugins_dir: Path | None = None) -> Table:
    """Every registered plugin with its stage, parameters (type, default) and default search range."""
    from autocompress.plugin import discover

    registry = discover(plugins_dir)
    table = Table(title="autocompress plugins", title_justify="left")
    for col in ("name", "stage", "runtimes", "parameters (default)", "default search range", "from"):
        table.add_column(col)
    for cls in registry:
        params = "\n".join(f"{k} = {f.default!r}" for k, f in cls.Config.model_fields.items())
        space = "\n".join(f"{k}: {v}" for k, v in cls.search_space.items())
        table.add_row(cls.name, cls.stage.value, ", ".join(sorted(cls.runtimes)) if cls.runtimes else "any",
                      params, space, Path(registry.origin(cls.name)).name)
    return table
