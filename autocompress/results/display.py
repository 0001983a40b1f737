"""Progress in the terminal: trials done / running / failed, elapsed and remaining time, front size."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from autocompress.trial import TrialRecord


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class SearchDisplay:
    """Prints one line per event and keeps a live status line at the bottom."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._progress = None
        self._live: Live | None = None

    def status(self) -> Text:
        p = self._progress
        if p is None:
            return Text("")
        elapsed = time.time() - p.started
        left = f"  left {_clock(p.timeout - elapsed)}" if p.timeout else ""
        return Text(f"trials {p.done}/{p.total}  running {p.running}  failed {p.failed}  stopped {p.stopped}  "
                    f"front {p.front}  elapsed {_clock(elapsed)}{left}", style="cyan")

    @contextlib.contextmanager
    def live(self, progress):
        self._progress = progress
        if not self.enabled or not self.console.is_terminal:
            yield
            return
        with Live(self.status(), console=self.console, refresh_per_second=2, transient=True,
                  get_renderable=self.status) as live:
            self._live = live
            yield
        self._live = None

    def event(self, kind: str, payload) -> None:
        if not self.enabled:
            return
        if kind == "log":
            self.console.print(f"[dim]{payload}[/]", highlight=False)
        elif kind == "trial":
            self.console.print(trial_line(payload), highlight=False)
            if not self.console.is_terminal:
                self.console.print(f"[dim]{self.status()}[/]", highlight=False)


def describe_choices(choices: dict) -> str:
    """``prune=channel_prune(ratio=0.5) + quantize=int8_static`` style summary."""
    parts = []
    for stage, (name, params) in choices.items():
        if name == "none" or stage == "runtime":
            continue
        args = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        parts.append(f"{name}({args})" if args else name)
    text = " + ".join(parts) or "no compression"
    return f"{text} on {choices['runtime'][0]}" if "runtime" in choices else text


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_line(record: TrialRecord) -> str:
    """One line for the terminal about a finished trial."""
    head = f"trial {record.number:>3}"
    if record.state == "pruned":
        stage, step = (record.stopped.stage, record.stopped.step) if record.stopped else (None, None)
        return (f"{head} [yellow]stopped[/] at {stage} step {step}  {record.duration_s:5.1f}s  "
                f"{record.reason}")
    if record.state != "complete":
        return f"{head} [red]failed[/] {record.reason}"
    m = record.metrics
    flag = "[green]feasible[/]" if record.feasible else "[yellow]infeasible[/]"
    if record.stopped:
        flag += f" [yellow](stopped at {record.stopped.stage}: untrained figures)[/]"
    elif record.cache and record.cache.hit:
        flag += f" [dim](reused trial {record.cache.from_trial}'s fine-tune)[/]"
    return (f"{head} {m.accuracy:6.2f}%  {m.latency_ms:7.3f} ms  {m.size_mb:7.3f} MB  {flag}  "
            f"{record.duration_s:5.1f}s  {describe_choices(record.choices)}")


def short_count(n: float | None) -> str:
    """``4099008`` -> ``4.1M``; ``None`` -> ``n/a``."""
    if n is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
