"""The ``autocompress`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

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
    plugins_dir: Optional[Path] = typer.Option(None, "--plugins-dir", help="Folder of plugin files."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the study of this run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Run a compression search and write results/<run>/."""
    from autocompress.config import load_config
    from autocompress.controller import Search, default_run_dir, load_resume
    from autocompress.display import SearchDisplay

    overrides = {k: v for k, v in {
        "search.trials": trials, "search.timeout": timeout, "search.seed": seed, "search.sampler": sampler,
        "search_space": str(search_space) if search_space else None,
        "plugins_dir": str(plugins_dir) if plugins_dir else None,
    }.items() if v is not None}
    if resume is not None:
        if config is not None:
            raise UserError("--resume: give either a config file or --resume RUN, not both")
        base_config = load_resume(resume)
        cfg = load_config(None, {**_flatten(base_config.model_dump(mode="json")), **overrides})
        run_dir = resume
    else:
        cfg = load_config(config, overrides)
        run_dir = out or default_run_dir(cfg)
        if (Path(run_dir) / "config.yaml").exists():
            raise UserError(f"--out: {run_dir} already holds a run; use --resume {run_dir} to continue it")
    display = SearchDisplay(console, enabled=not quiet)
    runner = Search(config=cfg, run_dir=run_dir, on_event=display.event)
    runner.validate()
    console.print(f"[bold]autocompress[/] run folder: {run_dir}")
    try:
        with display.live(runner.progress):
            pareto = runner.search()
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped.[/] Resume with: autocompress search --resume {run_dir}")
        raise typer.Exit(130)
    from autocompress.show import front_table

    console.print(front_table(Path(run_dir)))
    console.print(f"{pareto['trials_finished']} trials finished, {pareto['trials_failed']} failed, "
                  f"{len(pareto['front'])} on the front.  Results: [bold]{run_dir}[/]")


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
    sort: str = typer.Option("accuracy", "--sort", help="accuracy, latency or size."),
    max_latency: Optional[str] = typer.Option(None, "--max-latency", help="Only models at most this fast, e.g. 2ms."),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Only models at most this big, e.g. 4MB."),
) -> None:
    """Show the Pareto front of a run, with the base model and the change vs base."""
    from autocompress.show import front_table, parse_quantity

    console.print(front_table(run, sort=sort, max_latency_ms=parse_quantity(max_latency, "ms", "--max-latency"),
                              max_size_mb=parse_quantity(max_size, "mb", "--max-size")))


@app.command()
def plugins(
    plugins_dir: Optional[Path] = typer.Option(None, "--plugins-dir", help="Folder of plugin files."),
) -> None:
    """List the available plugins: name, stage, parameters and default search ranges."""
    from autocompress.show import plugins_table

    console.print(plugins_table(plugins_dir))


def main() -> None:
    """Entry point: user errors print one line and exit 2."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        app(standalone_mode=False)
    except UserError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
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
