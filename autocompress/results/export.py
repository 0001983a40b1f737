"""``autocompress export``: write a front model in a deploy format, reload it and re-measure it.

The front trial's artefact is the deployable model. Writing it in its own format copies it; writing a
float trial in another format converts the float module saved beside the artefact (exact: the same
weights). The written file is then loaded on its runtime and measured again (val and test top-1,
latency) so the figures can be checked against those recorded in the search. The base is timed beside
it (interleaved rounds), so its latency is also a ratio to the base, the figure the search judged;
latency is reported, not checked (one window's figures vary with the machine's load).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from autocompress.errors import UserError
from autocompress.results.load import (
    ARTEFACT_FORMAT,
    FORMATS,
    artefact_predictor,
    float_module,
    front_record,
    possible_formats,
    read_run,
    unreadable,
)
from autocompress.store import verify_files

TOLERANCE_PP = 0.1  # re-measured top-1 may differ from the recorded one by at most this much


class ExportMismatch(Exception):
    """The written model does not reproduce the accuracy recorded in the search."""


@dataclass
class ExportResult:
    """A written model and its figures.

    Attributes:
        path: The written file.
        format: ``onnx``, ``torchscript`` or ``pt2``.
        trial: The trial number.
        runtime: What the file was loaded and timed with.
        recorded: Metrics recorded in the search.
        measured: ``accuracy``, ``test_accuracy``, ``latency_ms`` and ``size_mb`` of the written file
            (empty when not verified), and where the base was timed beside it ``base_latency_ms`` and
            ``latency_vs_base`` (its ratio to the base's median in the same rounds).
        comparable: Whether ``latency_vs_base`` compares with the ratio the search recorded: the search
            timed on this machine's CPU (not on latency agents or a GPU) and the base was timed beside.
        batch_size: Batch of the latency measurement (the run's ``device.batch_size``).
    """

    path: Path
    format: str
    trial: int
    runtime: str
    recorded: dict
    measured: dict
    batch_size: int
    comparable: bool = False

    def mismatches(self, tolerance: float = TOLERANCE_PP) -> list[str]:
        """Accuracy figures that differ from the recorded ones by more than ``tolerance`` pp."""
        out = []
        for key, label in (("accuracy", "val top-1"), ("test_accuracy", "test top-1")):
            if key in self.measured and self.recorded.get(key) is not None \
                    and abs(self.measured[key] - self.recorded[key]) > tolerance:
                out.append(f"{label} {self.measured[key]:.2f}% vs {self.recorded[key]:.2f}% recorded")
        return out


def default_path(run: Path, trial: int, fmt: str) -> Path:
    """``RUN/exports/trial-NNNN<suffix>``."""
    return Path(run) / "exports" / f"trial-{trial:04d}{FORMATS[fmt]}"


def export(run: Path | str, trial: int, fmt: str, out: Path | str | None = None, *,
           verify: bool = True) -> ExportResult:
    """Writes front trial ``trial`` of ``run`` as ``fmt`` and (by default) re-measures the written file.

    Args:
        run: The run folder.
        trial: A trial number on the Pareto front.
        fmt: ``onnx``, ``torchscript`` or ``pt2``.
        out: The file to write; a folder (or a path without a file extension) gets the default
            file name inside it. Default ``RUN/exports/trial-NNNN.<ext>``.
        verify: Reload the written file and measure accuracy and latency.

    Returns:
        The :class:`ExportResult`.

    Raises:
        UserError: Bad run folder, trial or format (including a format the trial cannot take), or a base
            file that does not match the SHA-256 in its record.
        ExportMismatch: The written model's top-1 differs from the recorded one by more than 0.1 pp
            (the file is removed).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not a format; use {', '.join(FORMATS)}")
    info = read_run(run)
    record = front_record(info, trial)
    m = record.metrics
    allowed = possible_formats(info, record)
    if not allowed:
        raise UserError(f"--trial: trial {trial} is a {m.precision} {m.runtime} artefact; it is already in its "
                        f"deployable form at {info.path / record.artefact} (with the files beside it)")
    if fmt not in allowed:
        raise UserError(f"--format: trial {trial} ({m.precision} {m.runtime} artefact, no float module) "
                        f"can be exported as {' or '.join(allowed)} only")
    beside = info.base is not None and info.base.metrics is not None and bool(info.base.artefact) \
        and bool(info.base.files) and verify
    if beside:  # a run folder may come from elsewhere: the base's bytes are checked before anything is written
        verify_files(info.base.files, info.path, "the base")
    out = Path(out) if out is not None else default_path(info.path, trial, fmt)
    if out.is_dir() or not out.suffix:
        out = out / default_path(info.path, trial, fmt).name
    if fmt == "pt2" and out.suffix != ".pt2":
        raise UserError(f"--out: {out} must end in .pt2 (torch.export only reads .pt2 archives)")
    out.parent.mkdir(parents=True, exist_ok=True)
    artefact = info.path / record.artefact
    config = info.config()

    from autocompress.data import load_data

    data = load_data(config.data, config.model.img_size)
    if fmt == ARTEFACT_FORMAT[m.runtime]:
        shutil.copyfile(artefact, out)
    else:
        write(float_module(info, record), data.test.example(config.device.batch_size), fmt, out)
    runtime = {"onnx": "onnxruntime", "pt2": "torch", "torchscript": "torchscript"}[fmt]
    result = ExportResult(out, fmt, trial, runtime, m.to_json(), {}, config.device.batch_size)
    if verify:
        try:
            with unreadable(f"trial {trial}: {out}"):
                predictor = load_predictor(out, fmt, config.device.threads)
        except UserError:
            out.unlink(missing_ok=True)  # a file that does not load is no export
            raise
        base = artefact_predictor(info, info.base, "the base", threads=config.device.threads) if beside else None
        result.measured = measure(predictor, data, config, base=base)
        result.measured["size_mb"] = round(out.stat().st_size / 1e6, 6)
        result.comparable = base is not None and config.device.type == "cpu" and not config.device.agents
        wrong = result.mismatches()
        if wrong:
            out.unlink(missing_ok=True)
            raise ExportMismatch(f"trial {trial} written as {fmt} does not reproduce the search's accuracy "
                                 f"({'; '.join(wrong)}; tolerance {TOLERANCE_PP} pp); {out} was removed")
    return result


def write(module: torch.nn.Module, example: torch.Tensor, fmt: str, path: Path) -> Path:
    """Writes a float module as ``onnx`` (dynamic batch), ``pt2`` (``torch.export``, dynamic batch) or
    ``torchscript`` (traced)."""
    from autocompress.measure import RUNTIMES, export_onnx, quiet

    module = module.eval().cpu()
    if fmt == "onnx":
        export_onnx(module, example, path)
    elif fmt == "pt2":
        RUNTIMES["torch"].save(module, example, path)
    else:
        with torch.no_grad(), quiet():
            traced = torch.jit.trace(module, example[:1].detach().cpu())
        traced.save(str(path))
    return path


def load_predictor(path: Path, fmt: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor for a written file, on the runtime of its format."""
    from autocompress.measure import get_runtime
    from autocompress.plugin import Artefact

    if fmt == "torchscript":
        import warnings

        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; the format was asked for
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x).float()

        return predict
    runtime = "onnxruntime" if fmt == "onnx" else "torch"
    return get_runtime(runtime).load(Artefact(Path(path), runtime), threads=threads)


def measure(predict: Callable[[torch.Tensor], torch.Tensor], data, config, *,
            base: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Val and test top-1 and latency of a predictor, measured as the search measured them.

    Args:
        predict: The written model.
        data: The run's data.
        config: The run's config (its ``device`` settings time it).
        base: The base's predictor: timed beside the model in interleaved rounds, for ``latency_vs_base``.
    """
    from autocompress.measure import measure_latency, top1

    d = config.device
    predictors = {"model": predict} | ({"base": base} if base is not None else {})
    lat = measure_latency(predictors, data.test.example(d.batch_size), warmup=d.warmup,
                          repeats=d.repeats, rounds=d.rounds, threads=d.threads)
    out = {
        "accuracy": round(top1(predict, data.val, batch_size=config.data.batch_size), 4),
        "test_accuracy": round(top1(predict, data.test, batch_size=config.data.batch_size), 4),
        "latency_ms": lat["model"].median_ms,
    }
    if base is not None:
        out["base_latency_ms"] = lat["base"].median_ms
        out["latency_vs_base"] = round(lat["model"].median_ms / lat["base"].median_ms, 4)
    return out
