"""Taking a model home: ``autocompress.load(RUN, trial=N)`` gives a ready model of a run's front.

A front trial keeps its deployable artefact (``trials/NNNN/model.onnx`` or ``model.pt2``); a float
trial also keeps the float ``nn.Module`` it was saved from, code-free (``trials/NNNN/model.module.safetensors``
and ``.json``: weights and the structure that rebuilds the pruned timm model), so it can be used in
PyTorch or written in another format exactly. An int8 ONNX artefact has no module: it is loaded as an
ONNX Runtime session.

A run folder may come from elsewhere: nothing here unpickles a file of it or imports a plugin it
names, and every file of a trial is checked against the SHA-256 in its record before use.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.errors import UserError
from autocompress.store import TRIAL_MODULE as MODULE_STEM
from autocompress.store import load_exported, load_module, module_files, verify_files
from autocompress.trial import TrialRecord, read_record

ARTEFACT_FORMAT = {"onnxruntime": "onnx", "torch": "pt2"}
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}


@dataclass
class RunInfo:
    """What a run folder says about itself (read once)."""

    path: Path
    pareto: dict
    records: dict[int, TrialRecord]
    base: TrialRecord | None

    @property
    def front_numbers(self) -> list[int]:
        return [r["number"] for r in self.pareto["front"]]

    def config(self):
        """The run's resolved :class:`~autocompress.config.schema.RunConfig`."""
        import yaml

        from autocompress.config import RunConfig

        return RunConfig.model_validate(yaml.safe_load((self.path / "config.yaml").read_text()))


def read_run(run: Path | str) -> RunInfo:
    """Reads ``pareto.json``, ``trials.jsonl`` and ``base.json`` of a run folder.

    Raises:
        UserError: ``run`` is not a run folder, or a record in it is malformed or of a newer version.
    """
    from autocompress.results.show import load_run

    run = Path(run)
    if not run.exists():
        raise UserError(f"RUN: {run} does not exist")
    pareto, records = load_run(run)
    base = read_record(run / "base.json") if (run / "base.json").is_file() else None
    return RunInfo(run, pareto, {r.number: r for r in records}, base)


def front_record(info: RunInfo, trial: int | None) -> TrialRecord:
    """The full record of a front trial (``None`` = the most accurate one).

    Raises:
        UserError: The trial does not exist, failed, is not on the front, or its artefact is gone.
    """
    front = info.front_numbers
    if trial is None:
        if not front:
            raise UserError(f"RUN: {info.path} has no model on its Pareto front (no feasible trial)")
        trial = front[0]
    if trial not in info.records:
        known = f"0..{max(info.records)}" if info.records else "none yet"
        raise UserError(f"--trial: {info.path} has no trial {trial} (recorded trials: {known})")
    record = info.records[trial]
    if record.state != "complete":
        raise UserError(f"--trial: trial {trial} failed ({record.reason}); it has no model")
    if trial not in front:
        why = "it is infeasible" if not record.feasible else "it is dominated"
        raise UserError(f"--trial: trial {trial} is not on the Pareto front ({why}; its model was not kept); "
                        f"front trials: {', '.join(map(str, front)) or 'none'}")
    if not record.artefact or not (info.path / record.artefact).is_file():
        raise UserError(f"--trial: the artefact of trial {trial} is missing ({info.path / str(record.artefact)})")
    if record.metrics is None:
        raise UserError(f"--trial: trial {trial} has no recorded metrics; it has no model")
    verify_files(record.files, info.path, f"trial {trial}")
    return record


def possible_formats(info: RunInfo, record: TrialRecord) -> list[str]:
    """The formats a front trial can be written in: its artefact's own, plus every format when a
    float module exists (the saved module, or a ``.pt2`` program that is one)."""
    m = record.metrics
    own = ARTEFACT_FORMAT.get(m.runtime)
    float_module = m.precision == "fp32" and (_has_module(info, record) or own == "pt2")
    return list(FORMATS) if float_module else [f for f in [own] if f]


def trial_folder(info: RunInfo, record: TrialRecord) -> Path:
    return (info.path / record.artefact).parent


def _has_module(info: RunInfo, record: TrialRecord) -> bool:
    """Whether the trial kept its float module (recorded, hence hash-checked, files only)."""
    folder = trial_folder(info, record).resolve().relative_to(info.path.resolve())
    return all(str(folder / f.name) in (record.files or {}) for f in module_files(MODULE_STEM))


def float_module(info: RunInfo, record: TrialRecord) -> torch.nn.Module | None:
    """The float ``nn.Module`` of a front trial, or ``None`` when the trial has none (int8 artefacts)."""
    if record.metrics.precision != "fp32":
        return None
    if _has_module(info, record):
        with unreadable(f"trial {record.number}"):
            return load_module(trial_folder(info, record) / MODULE_STEM)
    artefact = info.path / record.artefact
    if artefact.suffix == ".pt2":
        with unreadable(f"trial {record.number}: {artefact}"):
            return load_exported(artefact).module()
    return None


@contextlib.contextmanager
def unreadable(what: str):
    """Turns a failure to read a run's file into one line: the file is the user's input."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a parser raises on foreign bytes
        text = str(err).strip().splitlines()
        raise UserError(f"{what}: cannot be loaded ({type(err).__name__}: {text[0][:200] if text else ''})") from None


def artefact_predictor(info: RunInfo, record: TrialRecord, what: str, *, threads: int, device: str = "cpu"):
    """``record``'s artefact (the base's, or a trial's) loaded with the runtime that measured it, for timing
    beside another; a file that does not load is one line naming ``what`` (its bytes were checked by the
    caller, e.g. with :func:`~autocompress.store.verify_files`)."""
    from autocompress.measure import get_runtime
    from autocompress.plugin import Artefact

    artefact = Artefact(info.path / record.artefact, record.metrics.runtime, record.metrics.precision)
    with unreadable(f"{what}: {artefact.path}"):
        return get_runtime(artefact.runtime).load(artefact, threads=threads, device=device)


def preprocessing(info: RunInfo) -> dict:
    """Input size and normalisation of a run (``data.json``; rebuilt from the config for older runs)."""
    if (info.path / "data.json").is_file():
        summary = json.loads((info.path / "data.json").read_text())
    else:
        from autocompress.data import load_data

        config = info.config()
        summary = load_data(config.data, config.model.img_size).summary()
    return {
        "img_size": summary["img_size"], "mean": list(summary["mean"]), "std": list(summary["std"]),
        "num_classes": summary["num_classes"], "classes": summary["classes"],
        "input": "float32 [B,3,H,W] RGB: pixels/255, then (x - mean) / std per channel",
    }


@dataclass
class LoadedModel:
    """A front model of a run, ready to predict.

    Attributes:
        model: A ready ``nn.Module`` in eval mode for float trials; an ``onnxruntime.InferenceSession``
            for int8 ONNX artefacts (there is no module for those).
        metrics: The metrics the search recorded (``accuracy`` = val top-1 %, ``test_accuracy`` =
            held-out test top-1 %, ``latency_ms``, ``size_mb``, ``params``, ``macs``, ``macs_int8``,
            ``memory_mb``, ``energy_mj`` and ``energy_source``, ``precision``, ``runtime``; ``not_measured``
            says why a figure is ``None``; runs from before those figures lack them).
        preprocessing: ``img_size``, ``mean``, ``std``, ``num_classes``, ``classes`` and a description of
            the input.
        trial: The trial number.
        choices: The plugins and parameters of the trial.
        artefact: The deployable artefact file.
    """

    model: Any
    metrics: dict
    preprocessing: dict
    trial: int
    choices: dict
    artefact: Path
    _predict: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, default=None)

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 images ``[B,3,H,W]`` or ``[3,H,W]`` (0..255) → the normalised float batch the model takes.

        Images of another size are resized (bilinear) to ``img_size``.
        """
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        x = x.float() / 255.0
        size = self.preprocessing["img_size"]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.preprocessing["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing["std"]).view(1, 3, 1, 1)
        return (x - mean) / std

    def predict(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits ``[B, num_classes]``.

        Args:
            x: uint8 images (preprocessed first, see :meth:`preprocess`) or an already normalised
                float32 batch ``[B,3,H,W]``.
        """
        x = torch.as_tensor(x)
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        elif x.ndim == 3:
            x = x.unsqueeze(0)
        return self._predict(x.float())


def load(run: Path | str, trial: int | None = None, *, threads: int | None = None) -> LoadedModel:
    """Loads a front model of a finished (or running) search.

    Args:
        run: The run folder.
        trial: A trial number on the Pareto front; ``None`` = the most accurate front model.
        threads: Intra-op threads of an ONNX Runtime session (default: the run's ``device.threads``).

    Returns:
        A :class:`LoadedModel`.

    Raises:
        UserError: Not a run folder, or the trial does not exist, failed or is not on the front.

    Example::

        import autocompress
        m = autocompress.load("results/my-run", trial=7)
        logits = m.predict(uint8_images)            # [B,3,H,W] uint8, resized and normalised for you
    """
    from autocompress.measure import get_runtime, module_predictor
    from autocompress.plugin import Artefact

    info = read_run(run)
    record = front_record(info, trial)
    artefact = info.path / record.artefact
    module = float_module(info, record)
    if module is not None:
        model, predict = module, module_predictor(module)
    else:
        threads = threads or info.config().device.threads
        m = record.metrics
        with unreadable(f"trial {record.number}: {artefact}"):
            if m.runtime == "onnxruntime":
                model, predict = _onnx_session(artefact, threads)
            else:
                model = predict = get_runtime(m.runtime).load(Artefact(artefact, m.runtime, m.precision),
                                                              threads=threads)
    return LoadedModel(model=model, metrics=record.metrics.to_json(), preprocessing=preprocessing(info),
                       trial=record.number, choices=record.choices, artefact=artefact, _predict=predict)


def _onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])

    return session, predict
