"""The ``autocompress`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from autocompress.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Search pruning, distillation and quantization of timm models, measured on the device.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@app.command()
def search(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML; none = the embedded digits default."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials in the study."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Wall-clock budget, e.g. 30m, 8h."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default results/<time>-<model>-<data>)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampler and trials."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe, nsga2 or random."),
    search_space: Optional[Path] = typer.Option(None, "--search-space", help="Search-space YAML."),
    plugins_dir: Optional[Path] = typer.Option(None, "--plugins-dir",
                                               help="Folder of plugin files, added to the shipped ones."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the study of this run folder."),
    executor: Optional[str] = typer.Option(None, "--executor", help="inprocess or ray."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Trials at once (with --executor ray)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="auto, ray://host:10001; none = local Ray."),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="CPUs Ray reserves per trial."),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="GPUs per trial (0.5 shares one)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Run a compression search and write results/<run>/."""
    from autocompress.config import load_config
    from autocompress.results import SearchDisplay
    from autocompress.search import Search, default_run_dir, load_resume

    overrides = {k: v for k, v in {
        "search.trials": trials, "search.timeout": timeout, "search.seed": seed, "search.sampler": sampler,
        "search_space": str(search_space) if search_space else None,
        "plugins_dir": str(plugins_dir) if plugins_dir else None,
        "search.executor": executor, "search.workers": workers, "search.ray_address": ray_address,
        "search.cpus_per_trial": cpus_per_trial, "search.gpus_per_trial": gpus_per_trial,
    }.items() if v is not None}
    if (workers or ray_address) and executor is None:
        overrides["search.executor"] = "ray"
    if resume is not None:
        if config is not None:
            raise UserError("--resume: give either a config file or --resume RUN, not both")
        base_config = load_resume(resume)
        # a run folder may come from elsewhere: plugins only from folders named now, never the one its config names
        received = {**_flatten(base_config.model_dump(mode="json")), "plugins_dir": None}
        cfg = load_config(None, {**received, **overrides})
        run_dir = resume
    else:
        cfg = load_config(config, overrides)
        run_dir = out or default_run_dir(cfg)
        if (Path(run_dir) / "config.yaml").exists():
            raise UserError(f"--out: {run_dir} already holds a run; use --resume {run_dir} to continue it")
        _check_run_folder(Path(run_dir), "--out" if out is not None else "run folder")
    display = SearchDisplay(console, enabled=not quiet)
    runner = Search(config=cfg, run_dir=run_dir, on_event=display.event)
    runner.validate()
    console.print(f"[bold]autocompress[/] run folder: {run_dir}")
    # said, since a resumed run imports these rather than what its folder names
    console.print(f"plugins: {escape(_plugin_sources(runner.registry.files()))}", highlight=False)
    try:
        with display.live(runner.progress):
            pareto = runner.search()
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped.[/] Resume with: autocompress search --resume {run_dir}")
        raise typer.Exit(130)
    from autocompress.results import front_table

    console.print(front_table(Path(run_dir)))
    console.print(f"{pareto['trials_finished']} trials finished, {pareto['trials_failed']} failed, "
                  f"{len(pareto['front'])} on the front.  Results: [bold]{run_dir}[/]")


def _plugin_sources(files: list[str]) -> str:
    """``2 files from DIR (a.py, b.py); 11 files from SHIPPED (shipped) (...)``: the folders given first."""
    from autocompress.plugin import shipped_plugins_dir

    shipped = str(shipped_plugins_dir().resolve())
    by_folder: dict[str, list[str]] = {}
    for f in files:
        by_folder.setdefault(str(Path(f).parent), []).append(Path(f).name)
    return "; ".join(
        f"{len(names)} files from {folder}{' (shipped)' if folder == shipped else ''} ({', '.join(names)})"
        for folder, names in sorted(by_folder.items(), key=lambda item: (item[0] == shipped, item[0]))
    ) or "0 files from no folder"


def _check_run_folder(run_dir: Path, flag: str = "--out") -> None:
    """A new run's folder must be creatable, and new or empty (no other files are mixed with, or lost to, a run)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{flag}: {run_dir} is a file, not a folder; name a new folder for the run")
    _check_creatable(run_dir, flag)
    if run_dir.is_dir():
        others = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UserError(f"{flag}: {run_dir} already holds files ({shown}) and is not a run folder; "
                            "name a new or empty folder")


def _check_creatable(folder: Path, flag: str, target: Path | None = None) -> None:
    """Raises a UserError when ``folder`` (for ``target``) cannot be made: a file stands on its path, or it is read-only."""
    target = target or folder
    for parent in [folder, *folder.parents]:
        if parent.is_dir():
            if parent != folder and not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{flag}: cannot create {target}: {parent} is not writable")
            return
        if parent.exists() or parent.is_symlink():
            raise UserError(f"{flag}: cannot create {target}: {parent} is a file, not a folder")


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@app.command()
def show(
    run: Path = typer.Argument(..., help="A run folder."),
    sort: str = typer.Option("accuracy", "--sort", help="accuracy, latency, size, params, macs, memory or energy."),
    max_latency: Optional[str] = typer.Option(None, "--max-latency", help="Only models at most this fast, e.g. 2ms."),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Only models at most this big, e.g. 4MB."),
) -> None:
    """Show the Pareto front of a run, with the base model and the change vs base."""
    from autocompress.results import front_table, parse_quantity

    console.print(front_table(run, sort=sort, max_latency_ms=parse_quantity(max_latency, "ms", "--max-latency"),
                              max_size_mb=parse_quantity(max_size, "mb", "--max-size")))


@app.command()
def plugins(
    plugins_dir: Optional[Path] = typer.Option(None, "--plugins-dir",
                                               help="Folder of plugin files, added to the shipped ones."),
) -> None:
    """List the available plugins: name, stage, parameters and default search ranges."""
    from autocompress.results import plugins_table

    console.print(plugins_table(plugins_dir))


@app.command()
def report(run: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Write RUN/report.html (interactive front, hypervolume, importances; works offline) and RUN/front.png."""
    from autocompress.results import write_report

    page, png = write_report(run)
    console.print(f"wrote [bold]{page}[/] and [bold]{png}[/]")


@app.command()
def retime(
    run: Path = typer.Argument(..., help="A run folder."),
    rounds: int = typer.Option(50, "--rounds", help="Interleaved rounds (each of the run's device.repeats calls)."),
) -> None:
    """Time the base and every front model together, in one interleaved run (RUN/retime.json; `show` adds it)."""
    from rich.table import Table

    from autocompress.results import retime as retime_run

    result = retime_run(run, rounds=rounds)
    s = result["settings"]
    table = Table(title=f"{Path(run).name}: the base and the front timed together ({s['rounds']} rounds x "
                        f"{s['repeats']} calls, batch {s['batch_size']}, {s['threads']} threads, {result['seconds']:g} s)",
                  title_justify="left", caption="paired: the model's round median over the base's in the same round; "
                                                "median over rounds [quartiles]", caption_justify="left")
    for col in ("trial", "runtime", "precision", "latency ms", "vs base", "paired vs base", "in search vs base"):
        table.add_column(col, justify="left" if col in {"trial", "runtime", "precision"} else "right")
    for row in result["rows"]:
        was = row["in_search_vs_base"]
        table.add_row("base" if row["trial"] is None else str(row["trial"]), row["runtime"], row["precision"],
                      f"{row['latency_ms']:.3f}", f"{row['vs_base']:.3f}x",
                      f"{row['paired_vs_base']:.3f}x [{row['paired_p25']:.3f}, {row['paired_p75']:.3f}]",
                      "" if row["trial"] is None else ("n/a" if was is None else f"{was:.3f}x"))
    console.print(table)
    console.print(f"wrote [bold]{Path(run) / 'retime.json'}[/]")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run folder."),
    trial: int = typer.Option(..., "--trial", help="A trial number on the Pareto front (see `autocompress show`)."),
    fmt: str = typer.Option(..., "--format", help="onnx, torchscript or pt2."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default RUN/exports/trial-NNNN.<ext>)."),
) -> None:
    """Write a front model as ONNX, TorchScript or a torch.export program; reload and re-measure it."""
    from rich.table import Table

    from autocompress.objectives import latency_ratio
    from autocompress.results import FORMATS, ExportMismatch
    from autocompress.results import export as export_model

    if out is not None and fmt in FORMATS:  # a folder, or a path without an extension, gets the default name inside
        if out.is_dir() or not out.suffix:
            if out.exists() and not out.is_dir():
                raise UserError(f"--out: {out} is a file without an extension; name the file with one "
                                f"(e.g. {out}{FORMATS[fmt]}) or a folder")
            _check_creatable(out, "--out")
        else:
            _check_creatable(out.parent, "--out", out)
    try:
        result = export_model(run, trial, fmt, out)
    except ExportMismatch as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    rec, new = result.recorded, result.measured
    table = Table(title=f"trial {trial} as {fmt}: re-measured vs in search", title_justify="left")
    for col in ("", f"in search ({rec['runtime']})", f"exported ({result.runtime})", "change"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label, unit in (("accuracy", "val top-1", "%"), ("test_accuracy", "test top-1", "%"),
                             ("latency_ms", f"latency (batch {result.batch_size})", " ms"),
                             ("size_mb", "size", " MB")):
        if rec.get(key) is None:  # test accuracy is evaluated in the search only for trials within budget
            table.add_row(label, "not evaluated", f"{new[key]:.4g}{unit}", "")
            continue
        change = new[key] - rec[key]
        if unit == "%":
            shown = f"{change:+.2f} pp"
        elif key == "latency_ms":
            shown = ""  # timed in another window: not a change of the model
        else:
            shown = f"{new[key] / rec[key]:.2f}x" if rec[key] else ""
        table.add_row(label, f"{rec[key]:.4g}{unit}", f"{new[key]:.4g}{unit}", shown)
    searched = latency_ratio(rec)
    if new.get("latency_vs_base") is not None:
        table.add_row("latency vs base timed beside", f"{searched:.3f}x" if searched is not None else "n/a",
                      f"{new['latency_vs_base']:.3f}x", "")
    console.print(table)
    where = "" if result.comparable or new.get("latency_vs_base") is None else \
        " (and the search timed its trials on latency agents or a GPU, not this machine's CPU)"
    console.print(f"latency is re-measured, not checked: one window's figures vary with the machine's load{where}; "
                  "`autocompress retime RUN` times the base and the whole front together", highlight=False)
    console.print(f"wrote [bold]{result.path}[/]")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
             add_help_option=False)
def agent(ctx: typer.Context) -> None:
    """Time artefacts on this machine for a search elsewhere (--host, --port, --token-file, --max-mb; --help)."""
    from autocompress.device import main as agent_main

    agent_main(list(ctx.args))


def main() -> None:
    """Entry point: user errors print one line and exit 2."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) is returned, not raised, outside standalone mode
            sys.exit(code)
    except UserError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
