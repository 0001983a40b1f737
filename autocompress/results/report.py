"""``autocompress report``: one self-contained HTML page and a PNG of a run's Pareto front.

``RUN/report.html`` holds the front in every pair of the run's objectives and, with three or more,
in 3-D (base model, infeasible and failed trials marked), the hypervolume of the feasible front
over trials and over wall time, parameter importances per objective and the front table with
every figure (params, MACs, int8 MACs, memory, energy) whatever the objectives. plotly.js is
embedded, so the page works offline. ``RUN/front.png`` is a static plot of accuracy against the
first other objective (or of the first two objectives) for slides and READMEs.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.objectives import OBJECTIVES, front, has_objectives, hypervolume, metric_keys
from autocompress.results.display import describe_choices, short_count
from autocompress.trial import TrialRecord

MIN_TRIALS_FOR_IMPORTANCE = 3
COLOURS = {"front": "#d62728", "feasible": "#1f77b4", "infeasible": "#9a9a9a", "base": "#2ca02c"}


@dataclass
class RunData:
    """A run folder's records, split the way the report shows them."""

    path: Path
    pareto: dict
    base: TrialRecord | None
    records: list[TrialRecord]
    config: dict

    @property
    def base_metrics(self) -> dict | None:
        """The base's figures by metric key (as ``pareto.json`` holds them), or ``None`` without a base."""
        return self.base.metrics.to_json() if self.base is not None and self.base.metrics is not None else None

    @property
    def complete(self) -> list[dict]:
        return [r for r in self.records if r.state == "complete"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.state == "fail"]

    @property
    def stopped(self) -> list[dict]:
        return [r for r in self.records if r.stopped]  # fine-tune stops (pruned) and structure stops

    @property
    def front_numbers(self) -> set[int]:
        return {r["number"] for r in self.pareto["front"]}

    def category(self, record: dict) -> str:
        if record.number in self.front_numbers:
            return "front"
        return "feasible" if record.feasible else "infeasible"

    @property
    def objectives(self) -> tuple[str, ...]:
        """The run's objectives as metric keys (runs from before they were chosen: the default three)."""
        return metric_keys(self.pareto.get("objectives") or self.config.get("objectives") or OBJECTIVES)

    @property
    def runtime_label(self) -> str:
        d = self.config.get("device", {})
        return f"{d.get('runtime', '?')}, batch {d.get('batch_size', 1)}, {d.get('threads', '?')} thread(s)"


def read(run: Path | str) -> RunData:
    """Reads a run folder for the report.

    Raises:
        UserError: ``run`` is not a run folder.
    """
    import yaml

    from autocompress.results.load import read_run

    info = read_run(run)
    config = yaml.safe_load((info.path / "config.yaml").read_text()) if (info.path / "config.yaml").is_file() else {}
    return RunData(info.path, info.pareto, info.base, [info.records[k] for k in sorted(info.records)], config or {})


# ----------------------------------------------------------------------------- hypervolume


REFERENCE_FACTOR = {"latency_ms": 2.0, "energy_mj": 2.0, "size_mb": 1.1, "params": 1.1, "macs": 1.1, "memory_mb": 1.1}
"""The hypervolume's reference point, as a multiple of the base's figure: timed figures 2x, the others 1.1x."""


def reference_point(base: dict, budget: dict, objectives=OBJECTIVES) -> dict[str, float]:
    """The fixed reference point of the hypervolume, derived from the base model.

    Accuracy floor = base val top-1 minus the allowed drop (0 when no drop is set); latency and
    energy = 2x the base's; size, params, MACs and memory = 1.1x the base's. An objective the base
    has no figure for (an older run, energy where none is measured) is left out.
    """
    drop = budget.get("max_accuracy_drop")
    out = {}
    for key in metric_keys(objectives):
        if key == "accuracy":
            out[key] = max(base["accuracy"] - drop, 0.0) if drop is not None else 0.0
        elif base.get(key):
            out[key] = REFERENCE_FACTOR[key] * base[key]
    return out


def _normalised_losses(records: list[dict], ref: dict[str, float]) -> list[tuple[float, ...]]:
    # Each objective scaled so the ideal (100 %, 0 ms, 0 MB, ...) is 0 and the reference point is 1.
    out = []
    for r in records:
        m = r.metrics
        if m is None or not all(m.figure(k) is not None for k in ref):
            continue
        p = tuple((100.0 - m.figure(k)) / max(100.0 - ref[k], 1e-9) if k == "accuracy" else m.figure(k) / ref[k]
                  for k in ref)
        if all(v < 1.0 for v in p):
            out.append(p)
    return out


def hypervolume_history(data: RunData) -> list[dict[str, float]]:
    """Normalised hypervolume of the feasible front as the search went on.

    Returns:
        One entry per recorded trial (failed ones included), in trial-number order:
        ``number``; ``elapsed_s``, when it finished (seconds since the base model was measured);
        ``by_number``, the hypervolume of the feasible trials numbered up to it; ``by_time``, that of
        the feasible trials finished by then (they differ only when trials ran in parallel).
    """
    if not data.base:
        return []
    ref = reference_point(data.base_metrics, data.pareto.get("budget") or {}, data.objectives)
    unit = [1.0] * len(ref)
    start = data.base.started or min((r.started for r in data.records), default=0.0)
    done = lambda r: r.finished or r.started  # noqa: E731
    feasible = [r for r in data.records if r.state == "complete" and r.feasible]
    out = []
    for r in sorted(data.records, key=lambda r: r.number):
        out.append({
            "number": r.number, "elapsed_s": round(done(r) - start, 2),
            "by_number": hypervolume(_normalised_losses([f for f in feasible if f.number <= r.number], ref), unit),
            "by_time": hypervolume(_normalised_losses([f for f in feasible if done(f) <= done(r)], ref), unit),
        })
    return out


# ----------------------------------------------------------------------------- study


def load_study(run: Path | str, config: dict | None = None):
    """The run's Optuna study (``study.db`` unless the config named another storage).

    Returns:
        ``(study, None)`` or ``(None, reason)``.
    """
    import optuna

    run = Path(run)
    search = (config or {}).get("search", {})
    storage = search.get("storage") or f"sqlite:///{(run / 'study.db').resolve()}"
    if not search.get("storage") and not (run / "study.db").is_file():
        return None, f"no study.db in {run}"
    try:
        names = optuna.get_all_study_names(storage)
        name = search.get("study_name") or (run.name if run.name in names else (names[0] if len(names) == 1 else None))
        if name is None:
            return None, f"cannot tell which study of {storage} belongs to this run ({', '.join(names)})"
        return optuna.load_study(study_name=name, storage=storage), None
    except Exception as err:  # an unreachable or foreign storage must not stop the report
        return None, f"could not open the study at {storage}: {type(err).__name__}: {err}"


def importances(study) -> tuple[dict[str, dict[str, float]], str | None]:
    """fANOVA parameter importances per objective, over the study's complete trials.

    Returns:
        ``({objective: {param: importance}}, note)``; empty with a note when there are too few trials.
    """
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
                    f"this study has {len(complete)}.")
    names = study.metric_names or list(OBJECTIVES)
    out = {}
    try:
        for i, name in enumerate(names):
            out[name] = optuna.importance.get_param_importances(
                study, target=lambda t, i=i: t.values[i],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as err:
        return {}, f"Parameter importances could not be computed: {err}"
    if not any(out.values()):
        return {}, "No parameter varied across every complete trial, so there is nothing to rank."
    return out, None


# ----------------------------------------------------------------------------- figures

AXES = {
    "accuracy": "val top-1 (%)",
    "latency_ms": "latency (ms)",
    "size_mb": "size on disk (MB)",
    "params": "parameters",
    "macs": "MACs per call",
    "memory_mb": "peak memory of one inference (MB)",
    "energy_mj": "energy per inference (mJ)",
}
SHORT = {"accuracy": "accuracy", "latency_ms": "latency", "size_mb": "size", "params": "params", "macs": "MACs",
         "memory_mb": "memory", "energy_mj": "energy"}


def pairs(objectives) -> list[tuple[str, str]]:
    """Every pair of objectives as ``(x, y)``: accuracy on y where it is one of the two."""
    keys = metric_keys(objectives)
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            out.append((b, a) if a == "accuracy" else (a, b))
    return out


def figures(m: dict) -> dict[str, str]:
    """Params, MACs, int8 MACs, memory and energy of a metrics dict as text; ``n/a (why)`` where missing."""
    why = m.get("not_measured") or {}

    def na(key: str) -> str:
        return f"n/a ({why[key]})" if key in why else "n/a (not recorded by this run's autocompress)"

    int8 = m.get("macs_int8")
    share = f" ({100 * int8 / m['macs']:.0f} %)" if int8 and m.get("macs") else ""
    return {
        "params": f"{m['params']:,}" if m.get("params") is not None else na("params"),
        "macs": short_count(m["macs"]) if m.get("macs") is not None else na("macs"),
        "macs_int8": short_count(int8) + share if int8 is not None else na("macs_int8"),
        "memory_mb": f"{m['memory_mb']:.1f}" if m.get("memory_mb") is not None else na("memory_mb"),
        "energy_mj": (f"{m['energy_mj']:.4f} ({m.get('energy_source')})" if m.get("energy_mj") is not None
                      else na("energy_mj")),
    }


def _figures_line(m: dict) -> str:
    f = figures(m)
    short = lambda text: text if not text.startswith("n/a") else "n/a"  # noqa: E731
    return (f"{f['params']} params, {short(f['macs'])} MACs (int8 {short(f['macs_int8'])}), "
            f"memory {short(f['memory_mb'])} MB, energy {short(f['energy_mj'])} mJ")


def _hover(r: TrialRecord) -> str:
    m = r.metrics
    test = f"{m.test_accuracy:.2f}%" if m.test_accuracy is not None else "not evaluated: over budget"
    return (f"trial {r.number}<br>val top-1 {m.accuracy:.2f}% (test {test})"
            f"<br>{m.latency_ms:.4f} ms, {m.size_mb:.3f} MB, {m.precision}"
            f"<br>{html.escape(_figures_line(m.to_json()))}"
            f"<br>{html.escape(describe_choices(r.choices))}")


def _base_hover(b: dict) -> str:
    return (f"base model<br>val top-1 {b['accuracy']:.2f}% (test {b['test_accuracy']:.2f}%)"
            f"<br>{b['latency_ms']:.4f} ms, {b['size_mb']:.3f} MB, {b['precision']}<br>{html.escape(_figures_line(b))}")


def _front_2d(records: list[TrialRecord], x: str, y: str) -> list[TrialRecord]:
    """The front of this pair of objectives by the run's own rule (:func:`~autocompress.objectives.front`:
    latency as the ratio to the base timed beside each model, one model per structure), ordered along x
    for a step line drawn through the figures as measured."""
    keep = front([r for r in records if has_objectives(r, (x, y))], (x, y))
    return sorted(keep, key=lambda r: r.metrics.figure(x))


def projections_figure(data: RunData):
    """The front in each pair of the run's objectives (one panel with two objectives)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = pairs(data.objectives)
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.07 if len(panels) <= 3 else 0.04,
                        subplot_titles=[f"{SHORT[y]} vs {SHORT[x]}" for x, y in panels])
    groups = {c: [r for r in data.complete if data.category(r) == c and has_objectives(r, data.objectives)]
              for c in ("front", "feasible", "infeasible")}
    labels = {"front": "Pareto front", "feasible": "feasible, dominated", "infeasible": "infeasible (over budget)"}
    symbols = {"front": "circle", "feasible": "circle-open", "infeasible": "x"}
    feasible = groups["front"] + groups["feasible"]
    for col, (x, y) in enumerate(panels, start=1):
        line = _front_2d(feasible, x, y)
        if len(line) > 1:
            fig.add_trace(go.Scatter(
                x=[r.metrics.figure(x) for r in line], y=[r.metrics.figure(y) for r in line], mode="lines",
                line={"shape": "hv", "dash": "dot", "color": COLOURS["front"], "width": 1},
                name="front in this projection", legendgroup="line", showlegend=col == 1, hoverinfo="skip"),
                row=1, col=col)
        for cat, rows in groups.items():
            if not rows:
                continue
            fig.add_trace(go.Scatter(
                x=[r.metrics.figure(x) for r in rows], y=[r.metrics.figure(y) for r in rows], mode="markers",
                marker={"color": COLOURS[cat], "symbol": symbols[cat], "size": 10 if cat == "front" else 8},
                name=labels[cat], legendgroup=cat, showlegend=col == 1,
                text=[_hover(r) for r in rows], hovertemplate="%{text}<extra></extra>"), row=1, col=col)
        if data.base and has_objectives(data.base, (x, y)):
            b = data.base_metrics
            fig.add_trace(go.Scatter(
                x=[b[x]], y=[b[y]], mode="markers", name="base model", legendgroup="base", showlegend=col == 1,
                marker={"color": COLOURS["base"], "symbol": "star", "size": 16, "line": {"width": 1, "color": "black"}},
                text=[_base_hover(b)], hovertemplate="%{text}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=AXES[x], row=1, col=col)
        fig.update_yaxes(title_text=AXES[y], row=1, col=col)
    title = "Pareto front" if len(panels) == 1 else "Pareto front: 2-D projections"
    fig.update_layout(height=460, margin={"t": 60, "b": 40, "l": 50, "r": 20},
                      legend={"orientation": "h", "y": -0.2}, title_text=title)
    return fig


def axes_3d(objectives) -> tuple[str, str, str] | None:
    """``(x, y, z)`` of the 3-D view: accuracy up where it is an objective; ``None`` with fewer than three."""
    keys = list(metric_keys(objectives))
    if len(keys) < 3:
        return None
    if "accuracy" in keys:
        others = [k for k in keys if k != "accuracy"]
        return others[0], others[1], "accuracy"
    return keys[0], keys[1], keys[2]


def front_3d_figure(data: RunData):
    """Every complete trial in three of the objectives (the first three; accuracy up), the front highlighted."""
    import plotly.graph_objects as go

    x, y, z = axes_3d(data.objectives)
    fig = go.Figure()
    labels = {"front": "Pareto front", "feasible": "feasible, dominated", "infeasible": "infeasible (over budget)"}
    for cat in ("front", "feasible", "infeasible"):
        rows = [r for r in data.complete if data.category(r) == cat and has_objectives(r, (x, y, z))]
        if rows:
            fig.add_trace(go.Scatter3d(
                x=[r.metrics.figure(x) for r in rows], y=[r.metrics.figure(y) for r in rows],
                z=[r.metrics.figure(z) for r in rows], mode="markers", name=labels[cat],
                marker={"color": COLOURS[cat], "size": 6 if cat == "front" else 4,
                        "symbol": "x" if cat == "infeasible" else "circle"},
                text=[_hover(r) for r in rows], hovertemplate="%{text}<extra></extra>"))
    if data.base and has_objectives(data.base, (x, y, z)):
        b = data.base_metrics
        fig.add_trace(go.Scatter3d(x=[b[x]], y=[b[y]], z=[b[z]], mode="markers",
                                   name="base model", marker={"color": COLOURS["base"], "size": 8, "symbol": "diamond"},
                                   text=[_base_hover(b)], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title_text="Pareto front: 3-D view", height=560, margin={"t": 50, "b": 10, "l": 10, "r": 10},
                      scene={"xaxis_title": AXES[x], "yaxis_title": AXES[y], "zaxis_title": AXES[z]})
    return fig


def hypervolume_figure(history: list[dict]):
    """Hypervolume over trial number and over wall time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["over trials", "over wall time"])
    by_time = sorted(history, key=lambda h: h["elapsed_s"])
    fig.add_trace(go.Scatter(x=[h["number"] for h in history], y=[h["by_number"] for h in history],
                             mode="lines+markers", line={"shape": "hv"}, name="hypervolume", showlegend=False,
                             hovertemplate="trial %{x}: %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[h["elapsed_s"] for h in by_time], y=[h["by_time"] for h in by_time],
                             mode="lines+markers", line={"shape": "hv"}, name="hypervolume", showlegend=False,
                             hovertemplate="%{x:.0f} s: %{y:.4f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="seconds since the base model was measured", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (share of the reference box)", rangemode="tozero")
    fig.update_layout(title_text="Hypervolume of the feasible front", height=380,
                      margin={"t": 60, "b": 40, "l": 50, "r": 20})
    return fig


def importance_figure(imps: dict[str, dict[str, float]]):
    """One bar chart of parameter importances per objective."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(imps)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[AXES.get(n, n) for n in names],
                        horizontal_spacing=0.12)
    for col, name in enumerate(names, start=1):
        items = sorted(imps[name].items(), key=lambda kv: kv[1])
        fig.add_trace(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", showlegend=False,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="importance (fANOVA)", range=[0, 1], row=1, col=col)
    fig.update_layout(title_text="Parameter importances per objective", margin={"t": 60, "b": 40, "l": 20, "r": 20},
                      height=max(300, 60 + 28 * max(len(v) for v in imps.values())))
    return fig


def png_axes(objectives) -> tuple[str, str]:
    """``(x, y)`` of ``front.png``: accuracy against the first other objective, else the first two objectives."""
    keys = list(metric_keys(objectives))
    if "accuracy" in keys:
        return next(k for k in keys if k != "accuracy"), "accuracy"
    return keys[0], keys[1]


def front_png(data: RunData, path: Path) -> Path:
    """A static 2-D plot of the run's front (:func:`png_axes`): every complete trial, the front
    highlighted with its trial numbers, the base marked, the budget lines drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from autocompress.objectives import BUDGET_METRICS

    x, y = png_axes(data.objectives)
    fig = Figure(figsize=(8, 5.2), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    feasible = []
    complete = [r for r in data.complete if has_objectives(r, (x, y))]
    for cat, label, style in (
        ("infeasible", "infeasible (over budget)", {"marker": "x", "s": 36, "linewidths": 1.2}),
        ("feasible", "feasible, dominated", {"marker": "o", "s": 36, "facecolors": "none"}),
        ("front", "Pareto front", {"marker": "o", "s": 64, "edgecolors": "black", "linewidths": 0.6, "zorder": 4}),
    ):
        rows = [r for r in complete if data.category(r) == cat]
        if cat != "infeasible":
            feasible += rows
        if not rows:
            continue
        colour = {"edgecolors": COLOURS[cat]} if style.get("facecolors") == "none" else {"c": COLOURS[cat]}
        ax.scatter([r.metrics.figure(x) for r in rows], [r.metrics.figure(y) for r in rows], label=label, **colour, **style)
        if cat == "front":
            for r in rows:
                ax.annotate(str(r.number), (r.metrics.figure(x), r.metrics.figure(y)),
                            textcoords="offset points", xytext=(5, 4), fontsize=8)
    line = _front_2d(feasible, x, y)
    if len(line) > 1:
        ax.step([r.metrics.figure(x) for r in line], [r.metrics.figure(y) for r in line], where="post",
                color=COLOURS["front"], linestyle=":", linewidth=1, label=f"front ({SHORT[y]} vs {SHORT[x]})")
    if data.base and has_objectives(data.base, (x, y)):
        b = data.base_metrics
        ax.scatter([b[x]], [b[y]], marker="*", s=260, c=COLOURS["base"], edgecolors="black",
                   linewidths=0.6, label="base model", zorder=5)
    budget = data.pareto.get("budget") or {}
    for field_name, key in BUDGET_METRICS.items():
        if budget.get(field_name) and key == x:
            ax.axvline(budget[field_name], color="grey", linestyle="--", linewidth=0.8, label=f"{SHORT[x]} budget")
        if budget.get(field_name) and key == y:
            ax.axhline(budget[field_name], color="grey", linestyle="--", linewidth=0.8, label=f"{SHORT[y]} budget")
    if y == "accuracy":
        if data.base and budget.get("max_accuracy_drop") is not None:
            ax.axhline(data.base.metrics.accuracy - budget["max_accuracy_drop"], color="grey", linestyle="-.",
                       linewidth=0.8, label="accuracy floor")
        focus = [r.metrics.accuracy for r in feasible]
        if data.base:
            focus.append(data.base.metrics.accuracy - (budget.get("max_accuracy_drop") or 0))
        if focus:
            low = max(0.0, min(focus) - 5.0)
            below = sum(r.metrics.accuracy < low for r in complete)
            if below:  # collapsed trials would squash the front into a line at the top
                ax.set_ylim(bottom=low, top=min(100.0, max(focus + [low]) + 2.0))
                ax.annotate(f"{below} trial(s) below {low:.0f} % not shown", xy=(0.99, 0.02), xycoords="axes fraction",
                            ha="right", fontsize=7, color="grey")
    label = lambda k: (f"latency (ms; {data.runtime_label})" if k == "latency_ms"  # noqa: E731
                       else "validation top-1 accuracy (%)" if k == "accuracy" else AXES[k])
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    ax.set_title(f"{data.path.name}: {SHORT[y]} vs {SHORT[x]} ({len(data.pareto['front'])} on the front, "
                 f"{len(data.complete)} complete, {len(data.failed)} failed)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# ----------------------------------------------------------------------------- HTML

def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


FRONT_HEADERS = ["trial", "val top-1 %", "Δ top-1 pp", "test top-1 %", "latency ms", "speed-up", "size MB", "smaller",
                 "params", "MACs", "int8 MACs", "memory MB", "energy mJ (source)", "precision", "configuration",
                 "artefact"]


def _front_rows(data: RunData) -> list[list[Any]]:
    """The base and every front model with the full row of figures, ``n/a (why)`` where one is missing."""
    rows = []
    if data.base:
        b = data.base_metrics
        f = figures(b)
        rows.append(["base", f"{b['accuracy']:.2f}", "", f"{b['test_accuracy']:.2f}", f"{b['latency_ms']:.4f}",
                     "1.00x", f"{b['size_mb']:.3f}", "1.00x", f["params"], f["macs"], f["macs_int8"], f["memory_mb"],
                     f["energy_mj"], b["precision"], "no compression", data.base.artefact or ""])
    for r in data.pareto["front"]:
        m, v = r["metrics"], r.get("vs_base") or {}
        f = figures(m)
        rows.append([r["number"], f"{m['accuracy']:.2f}",
                     f"{v['accuracy_pp']:+.2f}" if v.get("accuracy_pp") is not None else "",
                     f"{m['test_accuracy']:.2f}" if m.get("test_accuracy") is not None else "n/a",
                     f"{m['latency_ms']:.4f}",
                     f"{v['latency_x']:.2f}x" if v.get("latency_x") else "", f"{m['size_mb']:.3f}",
                     f"{v['size_x']:.2f}x" if v.get("size_x") else "", f["params"], f["macs"], f["macs_int8"],
                     f["memory_mb"], f["energy_mj"], m["precision"], describe_choices(r["choices"]),
                     r.get("artefact") or ""])
    return rows


OBJECTIVE_TEXT = {"accuracy": "validation top-1 (maximised)", "latency_ms": "latency on the target runtime",
                  "size_mb": "size of the saved artefact on disk", "params": "parameters",
                  "macs": "MACs per call (torch's FlopCounterMode on the exported float module)",
                  "memory_mb": "peak memory of one inference on the target runtime (resident-set growth)",
                  "energy_mj": "energy per inference (hardware counter over the latency rounds)"}


def _objectives_note(objectives) -> str:
    keys = metric_keys(objectives)
    minimised = [OBJECTIVE_TEXT[k] for k in keys if k != "accuracy"]
    parts = ([OBJECTIVE_TEXT["accuracy"]] if "accuracy" in keys else []) + (
        [", ".join(minimised) + " (minimised)"] if minimised else [])
    panel = ("the dotted line is the front of each 2-D projection" if len(keys) > 2
             else "the dotted line joins the front")
    return (f"Objectives of this run ({len(keys)}): {'; '.join(parts)}. The front is computed in these objectives "
            f"over feasible trials; {panel}. Hover a point for its configuration and figures. The table gives every "
            "model's full row of figures, objectives or not.")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:0.9em;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4} td:nth-last-child(-n+2),th:nth-last-child(-n+2){text-align:left}
table.failed td,table.failed th{text-align:left} .note{color:#555;font-size:0.92em} code{background:#f4f4f4;padding:1px 4px}
.summary td,.summary th{text-align:left}
"""


def build_html(data: RunData) -> str:
    """The report page (plotly.js inline)."""
    import plotly.offline

    history = hypervolume_history(data)
    study, study_note = load_study(data.path, data.config)
    imps, imp_note = importances(study) if study is not None else ({}, f"Parameter importances skipped: {study_note}.")
    parts = []

    def fig_html(fig) -> str:
        return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})

    budget = data.pareto.get("budget") or {}
    infeasible = [r for r in data.complete if not r.feasible]
    summary = [
        ["run folder", str(data.path.resolve())],
        ["model / data", f"{data.config.get('model', {}).get('name', '?')} / "
                         f"{data.config.get('data', {}).get('source', '?')} {data.config.get('data', {}).get('name') or ''}"],
        ["measured on", data.runtime_label],
        ["budget", ", ".join(f"{k} = {v}" for k, v in budget.items() if v is not None) or "none"],
        ["trials", f"{len(data.records)} recorded: {len(data.complete)} complete "
                   f"({len(data.complete) - len(infeasible)} feasible, {len(infeasible)} infeasible), "
                   f"{len(data.failed)} failed; {len(data.pareto['front'])} on the Pareto front"],
        ["final hypervolume", f"{history[-1]['by_number']:.4f}" if history else "n/a"],
    ]
    parts.append(f"<h1>autocompress report: {html.escape(data.path.name)}</h1>")
    parts.append(_table(["", ""], summary, "summary"))

    parts.append("<h2>Pareto front</h2>")
    parts.append(f'<p class="note">{html.escape(_objectives_note(data.objectives))}</p>')
    parts.append(fig_html(projections_figure(data)))
    if axes_3d(data.objectives):
        parts.append(fig_html(front_3d_figure(data)))
    parts.append(_table(FRONT_HEADERS, _front_rows(data)))

    parts.append("<h2>Failed trials</h2>")
    if data.failed:
        parts.append(f'<p class="note">{len(data.failed)} trial(s) failed and have no metrics '
                     '(tracebacks in <code>trials/NNNN/error.txt</code>).</p>')
        parts.append(_table(["trial", "configuration", "reason"],
                            [[r.number, describe_choices(r.choices), r.reason or ""] for r in data.failed],
                            "failed"))
    else:
        parts.append('<p class="note">No trial failed.</p>')

    parts.append("<h2>Stopped early</h2>")
    if data.stopped:
        parts.append(f'<p class="note">{len(data.stopped)} trial(s) stopped early: at <code>structure</code> when the '
                     'untrained structure already broke a budget (latency, size, params, MACs, memory or energy; figures kept, '
                     'infeasible), or during '
                     'fine-tuning when the accuracy curve could not reach the floor.</p>')
        parts.append(_table(["trial", "stage", "step", "configuration", "reason"],
                            [[r.number, r.stopped.stage or "", "" if r.stopped.step is None else r.stopped.step,
                              describe_choices(r.choices), r.stopped.reason or r.reason or ""]
                             for r in data.stopped], "failed"))
    else:
        parts.append('<p class="note">No trial stopped early.</p>')

    parts.append("<h2>Hypervolume</h2>")
    if history and data.base:
        ref = reference_point(data.base_metrics, budget, data.objectives)
        described = {
            "accuracy": lambda v: f'accuracy floor = base top-1 minus the allowed drop, or 0 % without one (<b>{v:.2f} %</b>)',
            "latency_ms": lambda v: f"latency = 2 × base (<b>{v:.4f} ms</b>)",
            "energy_mj": lambda v: f"energy = 2 × base (<b>{v:.4f} mJ</b>)",
            "size_mb": lambda v: f"size = 1.1 × base (<b>{v:.3f} MB</b>)",
            "params": lambda v: f"params = 1.1 × base (<b>{v:,.0f}</b>)",
            "macs": lambda v: f"MACs = 1.1 × base (<b>{v:,.0f}</b>)",
            "memory_mb": lambda v: f"memory = 1.1 × base (<b>{v:.1f} MB</b>)",
        }
        left_out = [SHORT[k] for k in data.objectives if k not in ref]
        parts.append(
            '<p class="note">Hypervolume of the feasible front in the run\'s objectives, normalised to the box between '
            'the ideal point (100 % top-1, zero for every other objective) and a fixed reference point derived from '
            'the base model: ' + ", ".join(described[k](v) for k, v in ref.items()) + '. '
            + (f'Left out (the base has no figure): {", ".join(left_out)}. ' if left_out else '')
            + 'Each objective is scaled to [0, 1] between the ideal and the reference value, so the hypervolume is '
            'the share of that box the front dominates (1 = a perfect, free model). Trials worse than the '
            'reference point in any objective add nothing.</p>')
        parts.append(fig_html(hypervolume_figure(history)))
    else:
        parts.append('<p class="note">Hypervolume not computed: ' + ("no trial recorded yet." if data.base else
                     "the run has no base record (base.json).") + '</p>')

    parts.append("<h2>Parameter importances</h2>")
    if imps:
        parts.append('<p class="note">fANOVA importances (Optuna) of the search parameters for each objective, '
                     'over the complete trials of the study (feasible or not). Only parameters present in every '
                     'complete trial are ranked, so a plugin\'s own parameters appear when that plugin was always '
                     'chosen.</p>')
        parts.append(fig_html(importance_figure(imps)))
    else:
        parts.append(f'<p class="note">{html.escape(imp_note or "")}</p>')
    if study is not None:
        parts.append(f'<p class="note">Explore the study interactively: <code>optuna-dashboard '
                     f'sqlite:///{html.escape(str((data.path / "study.db").resolve()))}</code></p>')

    stamp = dt.datetime.now().isoformat(timespec="seconds")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>autocompress report: {html.escape(data.path.name)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head><body>"
            + "\n".join(parts)
            + f'<p class="note">Generated {stamp} by autocompress from {html.escape(str(data.path))}.</p></body></html>')


def write_report(run: Path | str) -> tuple[Path, Path]:
    """Writes ``RUN/report.html`` and ``RUN/front.png``.

    Returns:
        The two paths.

    Raises:
        UserError: ``run`` is not a run folder.
    """
    from autocompress.store import atomic_write

    data = read(run)
    page = atomic_write(data.path / "report.html", build_html(data))
    png = front_png(data, data.path / "front.png")
    return page, png

