"""Tables for the terminal: a run's front, and the available plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.table import Table

from autocompress.display import describe_choices
from autocompress.errors import UserError

_QTY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_SCALE = {"ms": {"": 1, "ms": 1, "s": 1000, "us": 1e-3}, "mb": {"": 1, "mb": 1, "kb": 1e-3, "gb": 1e3, "b": 1e-6}}


def parse_quantity(text: str | None, unit: str, flag: str) -> float | None:
    """``"2ms"`` → 2.0, ``"500us"`` → 0.5, ``"4MB"`` → 4.0 (units of ``unit``)."""
    if text is None:
        return None
    match = _QTY.match(text.lower())
    if not match or match.group(2) not in _SCALE[unit]:
        allowed = ", ".join(u for u in _SCALE[unit] if u)
        raise UserError(f"{flag}: {text!r} is not a quantity; use a number with {allowed}")
    return float(match.group(1)) * _SCALE[unit][match.group(2)]


def load_run(run: Path | str) -> tuple[dict, list[dict]]:
    """``pareto.json`` and the trial records of a run folder."""
    run = Path(run)
    if not (run / "pareto.json").is_file():
        raise UserError(f"RUN: {run} is not a run folder (no pareto.json)")
    pareto = json.loads((run / "pareto.json").read_text())
    from autocompress.results import RunFolder

    return pareto, RunFolder(run).trials()


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f} pp"


def front_table(run: Path | str, *, sort: str = "accuracy", max_latency_ms: float | None = None,
                max_size_mb: float | None = None) -> Table:
    """The front of a run as a rich table, base row first."""
    keys = {"accuracy": ("accuracy", True), "latency": ("latency_ms", False), "size": ("size_mb", False)}
    if sort not in keys:
        raise UserError(f"--sort: {sort!r} is not allowed; use accuracy, latency or size")
    pareto, records = load_run(run)
    rows = [r for r in pareto["front"]
            if (max_latency_ms is None or r["metrics"]["latency_ms"] <= max_latency_ms)
            and (max_size_mb is None or r["metrics"]["size_mb"] <= max_size_mb)]
    key, reverse = keys[sort]
    rows.sort(key=lambda r: r["metrics"][key], reverse=reverse)
    failed = sum(r["state"] == "fail" for r in records)
    stopped = sum(bool(r.get("stopped")) for r in records)  # fine-tune stops (pruned) and structure stops
    infeasible = sum(r["state"] == "complete" and not r.get("feasible") for r in records)
    caption = None
    if pareto.get("throughput"):
        from autocompress.throughput import describe

        caption = "Throughput (last session): " + describe(pareto["throughput"])
    table = Table(title=f"Pareto front of {Path(run).name}: {len(rows)} of {len(pareto['front'])} shown; "
                        f"{len(records)} trials, {failed} failed, {stopped} stopped early, {infeasible} infeasible",
                  title_justify="left", caption=caption, caption_justify="left")
    for col in ("trial", "val top-1", "Δ top-1", "test top-1", "latency ms", "speed-up", "size MB", "smaller",
                "params", "precision", "configuration"):
        table.add_column(col, justify="left" if col in {"trial", "configuration", "precision"} else "right")
    base = pareto.get("base")
    if base:
        table.add_row("base", f"{base['accuracy']:.2f}", "", f"{base['test_accuracy']:.2f}",
                      f"{base['latency_ms']:.3f}", "1.00x", f"{base['size_mb']:.3f}", "1.00x",
                      f"{base['params']:,}", base["precision"], f"{base['runtime']}, no compression", style="dim")
    for r in rows:
        m, v = r["metrics"], r.get("vs_base") or {}
        table.add_row(str(r["number"]), f"{m['accuracy']:.2f}", _pct(v.get("accuracy_pp")),
                      f"{m['test_accuracy']:.2f}" if m.get("test_accuracy") is not None else "n/a",
                      f"{m['latency_ms']:.3f}", f"{v.get('latency_x', 0):.2f}x",
                      f"{m['size_mb']:.3f}", f"{v.get('size_x', 0):.2f}x", f"{m['params']:,}", m["precision"],
                      describe_choices(r["choices"]))
    return table


def plugins_table(plugins_dir: Path | None = None) -> Table:
    """Every registered plugin with its stage, parameters (type, default) and default search range."""
    from autocompress.registry import discover

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
