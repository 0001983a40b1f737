"""One trial: copy the base, apply the chosen plugins prune → distill → quantize, save the
artefact for the target runtime, reload it, and measure it.

A trial takes a plain :class:`TrialSpec` and returns a typed
:class:`~autocompress.trial.record.TrialRecord`, so any executor (in-process, Ray) can run it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import platform
import shutil
import socket
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from autocompress.config import RunConfig
from autocompress.data import DataBundle, load_data
from autocompress.device import AgentError
from autocompress.measure import (
    EnergyTracker,
    count_params,
    energy_meter,
    get_runtime,
    measure_footprint,
    measure_latency,
    module_predictor,
    recalibrated_top1,
    top1,
)
from autocompress.models import FitCheckpoint, FitState, NotCheckpointable, Rung, TimeUp, create_model
from autocompress.objectives import metric_keys, proxy_verdict, required_metrics, structure_verdict, within_budget
from autocompress.plugin import (
    NONE,
    STAGE_ORDER,
    Artefact,
    Registry,
    Stage,
    TeacherOutputs,
    TrialContext,
    curve_sample_size,
    discover,
)
from autocompress.store import TRIAL_MODULE as MODULE_STEM
from autocompress.store import Memo, NotRebuildable, content_key, file_hashes, link_or_copy, module_files, save_module
from autocompress.trial.base import load_base_weights, train_device
from autocompress.trial.early_stop import StopRule, StopTrial
from autocompress.trial.memo import ArtefactCache, LatencyHistory, ModelCache, ProbeMemo
from autocompress.trial.record import TrialRecord
from autocompress.trial.watchdog import StepTimeout, timed_step

BASE = "base"

# Wraps every latency measurement. A no-op in-process; an executor that runs trials side by
# side (Ray) replaces it with a per-node lock so two measurements never overlap on one node.
measurement_lock: Any = contextlib.nullcontext
TIME_UP = "stopped at the time limit; continues on --resume"
"""The reason of a trial whose fine-tune stopped itself at the search's time limit (saved, re-queued)."""
AGENT_NO_ENERGY = "latency is timed on an agent (device.agent), where this machine's energy counter cannot see it"
MODULE_FILES = tuple(f.name for f in module_files(MODULE_STEM))


@dataclass
class TrialSpec:
    """Everything a worker needs to run one trial.

    Attributes:
        number: Optuna trial number (-1 for the base model).
        choices: ``{stage: [plugin name or "none", params]}``, and ``runtime: [name, {}]`` when
            the runtime is searched.
        run_dir: The run folder (shared with workers).
        config: The resolved run config, as a plain dict.
        plugin_files: Plugin files to load (besides entry points).
        structure_only: Skip stages that do not change structure (a cheap probe of latency and size).
        keep_artefact: Keep the saved artefact under ``trials/<number>/``.
        floor: Accuracy floor in % for early stopping (base minus the allowed drop).
        history: Per-epoch curves ``[[step, accuracy], ...]`` of finished trials, for early stopping.
        front: ``[*objective values (the run's objectives, in order), latency / base]`` of the feasible trials on
            the front, for early stopping.
        deadline: When the search's time is up (epoch seconds), or ``None``: a fine-tune running then
            stops between two batches, saved, and the trial is recorded ``interrupted`` (re-queued; its
            fine-tune continues on ``--resume``).
        rung: The trial's rung of the fidelity ladder, or ``None``: ``index``, ``epochs``, ``rungs``,
            ``decay``, the ``stage`` and ``plugin`` whose length it sets, and ``promoted_from`` (the trial
            one rung below whose saved state its fine-tune continues).
        lineage: ``{"parent": number, "key": model cache key}``: a finished, less compressed trial whose
            fine-tuned float model (in ``RUN/cache/models`` under ``key``) the pruning step prunes further
            instead of pruning the base, or ``None``.
    """

    number: int
    choices: dict[str, list]
    run_dir: str
    config: dict
    plugin_files: list[str] = field(default_factory=list)
    structure_only: bool = False
    keep_artefact: bool = True
    floor: float | None = None
    history: list = field(default_factory=list)
    front: list = field(default_factory=list)
    deadline: float | None = None
    rung: dict | None = None
    lineage: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def trial_dir(run_dir: Path, number: int) -> Path:
    if number < 0:
        return Path(run_dir) / ("base" if number == -1 else "probe")
    return Path(run_dir) / f"trials/{number:04d}"


def trial_runtime(choices: dict, config: RunConfig) -> str:
    """The runtime a trial is saved for: the searched one, else the configured one."""
    return (choices.get("runtime") or [config.device.runtimes[0]])[0]


def resolve_devices(config: RunConfig, *, cuda: bool | None = None) -> tuple[torch.device, torch.device]:
    """The device a trial trains on and the device its artefact is measured on, chosen apart.

    Training (``ctx.device``: the plugins' fine-tunes, the teacher) follows ``train.device``;
    export, latency, size, memory, energy and accuracy evaluation follow ``device.type``.

    Args:
        config: The run config.
        cuda: Whether this process sees a CUDA device; ``None`` = ask torch.

    Returns:
        ``(train, target)``.

    Raises:
        RuntimeError: ``train.device`` or ``device.type`` is ``cuda`` where this process sees no CUDA
            device (the trial fails with this reason).
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if config.device.type == "cuda" and not cuda:
        raise RuntimeError("device.type is cuda but this worker sees no CUDA device")
    if config.train.device == "cuda" and not cuda:
        raise RuntimeError("train.device is cuda but this worker sees no CUDA device")
    return torch.device(train_device(config, cuda)), torch.device(config.device.type)


@functools.lru_cache(maxsize=4)
def _registry(files: tuple[str, ...]) -> Registry:
    return discover(files=list(files))


@functools.lru_cache(maxsize=2)
def _base_model(run_dir: str, config_json: str) -> torch.nn.Module:
    config = RunConfig.model_validate_json(config_json)
    data = load_data(config.data, config.model.img_size)
    model = create_model(config.model.model_copy(update={"pretrained": False, "checkpoint": None}),
                         config.model.num_classes or data.num_classes)
    model.load_state_dict(load_base_weights(Path(run_dir)))
    return model.eval()


@functools.lru_cache(maxsize=2)
def _base_predictor(path: str, runtime: str, threads: int, device: str, mtime: float):
    suffix_runtime = get_runtime(runtime)
    return suffix_runtime.load(Artefact(Path(path), runtime), threads=threads, device=device)


@functools.lru_cache(maxsize=2)
def _slice_bias(run_dir: str, config_json: str) -> float:
    """The base's top-1 on the validation sample curves are reported on, minus on the whole split."""
    config = RunConfig.model_validate_json(config_json)
    data = load_data(config.data, config.model.img_size)
    sample = data.val.sample(curve_sample_size(config.budget.max_accuracy_drop, len(data.val)), config.search.seed)
    if sample is data.val:
        return 0.0
    predict = module_predictor(_base_model(run_dir, config_json))
    return top1(predict, sample) - top1(predict, data.val)


def run_trial(spec: TrialSpec | dict) -> TrialRecord:
    """Runs one trial and returns its :class:`~autocompress.trial.record.TrialRecord`; never raises for a failing trial.

    The record holds ``state`` (``complete``, ``pruned`` = stopped early, or ``fail``), ``reason``, ``choices``, ``metrics``
    (accuracy, test_accuracy, latency_ms, size_bytes, size_mb, params, macs, macs_int8, memory_mb, energy_mj,
    energy_source, not_measured, precision, runtime), ``footprint`` (how MACs, memory and energy were measured),
    the full latency statistics, stage durations, the fine-tune curve and the artefact path;
    ``probe`` (figures of the untrained structure), ``stopped`` (stage, step, accuracy, reason of an
    early stop: a ``structure`` stop keeps state ``complete`` with the probe's figures, so the
    sampler's constraints learn from it) and ``cache`` (reuse of a fine-tuned model, ``kind: model``,
    or of a repeated configuration's whole artefact, ``kind: artefact``, then only timed again).
    """
    if isinstance(spec, dict):
        spec = TrialSpec(**spec)
    started, host = time.time(), socket.gethostname()
    out_dir = trial_dir(Path(spec.run_dir), spec.number)
    try:
        result = _run(spec, out_dir)
        return TrialRecord.measured(number=spec.number, choices=spec.choices, started=started, host=host,
                                    structure_only=spec.structure_only, parts=result)
    except TimeUp as stop:  # the same record as a trial the controller cancels at the time limit (Ray)
        with contextlib.suppress(OSError), open(out_dir / "log.txt", "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {stop}\n")
        return TrialRecord.interrupted_trial(number=spec.number, choices=spec.choices, reason=TIME_UP, started=started)
    except (Exception, MemoryError, StepTimeout) as err:  # a failing trial is data, not a crash
        details: dict[str, Any] = {}
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
        if isinstance(err, StepTimeout):  # "step timeout: prune channel_prune ran past 20m (search.step_timeout)"
            reason, details["timed_out"] = err.reason, err.to_dict()
        if isinstance(err, AgentError):  # "agent http://127.0.0.1:8470 unreachable: [Errno 111] Connection refused"
            reason, details["agent_error"] = str(err)[:500], err.url
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
        if not spec.keep_artefact or spec.number >= 0:
            for f in out_dir.glob("model*"):
                f.unlink(missing_ok=True)
        return TrialRecord.failed(number=spec.number, choices=spec.choices, reason=reason, started=started, host=host,
                                  structure_only=spec.structure_only, **details)
    finally:
        shutil.rmtree(out_dir / "tmp", ignore_errors=True)


def _run(spec: TrialSpec, out_dir: Path) -> dict[str, Any]:
    """The pipeline of one trial, each step a method of :class:`_Trial`: a configuration that ran
    before is only timed again; else its structure is probed first (one that cannot meet the
    budget stops there, untrained); else the fine-tune runs (or comes from the memo), then the
    quantizer, the export and the measurement."""
    trial = _Trial(spec, out_dir)
    trial.find_parent()
    return trial.repeat() or trial.probe() or trial.train_and_measure()


class _Trial:
    """What one trial's steps share: its config, data, runtime, base (the teacher), plugin steps,
    the fine-tune's curve and stop rule, and the parts of its record gathered so far."""

    def __init__(self, spec: TrialSpec, out_dir: Path) -> None:
        self.t_start = time.perf_counter()
        self.spec, self.out_dir = spec, out_dir
        self.config = config = RunConfig.model_validate(spec.config)
        torch.set_num_threads(config.device.threads)
        self.train_device, self.device = resolve_devices(config)  # fine-tunes on the first, measures on the second
        registry = _registry(tuple(spec.plugin_files))
        self.data: DataBundle = load_data(config.data, config.model.img_size)
        self.runtime = get_runtime(trial_runtime(spec.choices, config))
        # shared by the trials of this process; a plugin may have left it on the training device
        self.teacher = _base_model(spec.run_dir, config.model_dump_json()).cpu()
        self.work = out_dir / "tmp"
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps = [(stage, name, params, registry.get(name)) for stage in STAGE_ORDER
                      for name, params in [spec.choices.get(stage.value, [NONE, {}])] if name != NONE]
        if spec.structure_only:
            self.steps = [step for step in self.steps if step[3].changes_structure]
        self.trains = spec.number >= 0 and not spec.structure_only and any(cls.trains(p) for _, _, p, cls in self.steps)
        self.curve: list[list[float]] = []
        self.durations: dict[str, float] = {}
        self.plugin_log: list[str] = []
        self.out: dict[str, Any] = {"durations": self.durations, "curve": self.curve, "plugin_log": self.plugin_log}
        self.curve_images = curve_sample_size(config.budget.max_accuracy_drop, len(self.data.val))
        self.ladder = spec.rung if self.trains else None
        # below the top rung a trial is not stopped on its curve: promotion among its peers decides
        below_top = self.ladder is not None and self.ladder["index"] < len(self.ladder["rungs"]) - 1
        self.fit_rung: Rung | None = None
        if self.ladder is not None:
            self.out["rung"] = {"index": self.ladder["index"], "epochs": self.ladder["epochs"],
                                "promoted_from": self.ladder.get("promoted_from"), "continued": False}
        self.rule = StopRule(mode="none" if below_top else config.search.early_stop, floor=spec.floor,
                             history=spec.history, front=spec.front,
                             latency_margin=config.search.latency_margin, slice_size=self.curve_images,
                             objectives=metric_keys(config.objectives))
        self.offset = 0    # the curve's last step before the running stage: stages' epochs count on
        self.pending: list = []  # steps not yet applied
        self.trainers = 0  # fine-tuning steps from the running one on: a stage's last epoch ends the training only if it is the last
        self.running: int | None = None  # index in ``steps`` of the step being applied
        self.fits = 0  # fits of the running step so far
        self.memo_root, self.memo_bytes = Path(spec.run_dir) / "cache", config.search.cache_mb * 1e6
        self.base_id = _base_id(spec.run_dir)  # every memo key of this trial starts with it
        self.teacher_outputs: TeacherOutputs | None = None
        if config.search.cache and self.teacher is not None and self.train_device.type == "cpu":  # hashing a batch costs more than a GPU forward
            self.teacher_outputs = TeacherOutputs(self.teacher, self.memo_root / "teacher" / f"{self.base_id}-cpu",
                                                  max_bytes=self.memo_bytes)
        # a model fine-tuned on a GPU differs from one fine-tuned on the CPU: memo keys say which (CPU runs keep theirs)
        self.trained_on = [] if self.train_device.type == "cpu" else [f"trained on {self.train_device.type}"]
        self.parent: torch.nn.Module | None = None  # lineage: the fine-tuned model the pruning step starts from
        self.structural = [s for s in self.steps if s[3].changes_structure]
        self.structure_key = _probe_key(self.base_id, self.runtime.name, self.structural)  # latency and size follow it
        self.history = (LatencyHistory(self.memo_root / "latency", self.structure_key)
                        if config.search.cache and spec.number != -1 else None)  # the search's probes (-2) count too
        self.artefacts: ArtefactCache | None = None
        self.whole_key: str | None = None
        self.timer = _step_timer(spec, config, out_dir)
        self._save_and_measure = functools.partial(
            _save_and_measure, spec=spec, config=config, runtime=self.runtime, data=self.data, device=self.device,
            test_if=functools.partial(within_budget, budget=config.budget, floor=spec.floor)
            if spec.number >= 0 else None)  # the base (and the reference probe) always

    # -- what plugins and steps call --------------------------------------------------------

    def report(self, step: int, accuracy: float, final: bool = False, last: int | None = None,
               whole: float | None = None) -> None:
        """A plugin's ``ctx.report``: one point of the curve, judged by the stop rule."""
        at, before = self.offset + step, None if last is None else self.offset + last
        self.curve.append([at, round(float(accuracy), 4)])
        done = final and self.trainers <= 1
        if done and whole is not None:  # a finished fine-tune: judged on the whole validation split
            self.out["whole_val_after_training"] = round(float(whole), 4)
            self.rule.check(at, float(whole), last=before, final=True, whole=True)
        elif not final or done:
            self.rule.check(at, float(accuracy), last=before, final=done)

    def log(self, line: str) -> None:
        """A plugin's ``ctx.log``: into the record's ``plugin_log`` and the trial folder's ``log.txt``."""
        self.plugin_log.append(str(line))
        with contextlib.suppress(OSError), open(self.out_dir / "log.txt", "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def context(self, structure_only: bool, folder: Path) -> TrialContext:
        folder.mkdir(parents=True, exist_ok=True)
        c = self.config
        return TrialContext(
            data=self.data, teacher=self.teacher, device=self.train_device, runtime=self.runtime.name,
            example_input=self.data.train.example(c.device.batch_size), workdir=folder,
            seed=c.search.seed, batch_size=c.data.batch_size, threads=c.device.threads,
            report=self.report, log=self.log, structure_only=structure_only, teacher_outputs=self.teacher_outputs,
            curve_images=self.curve_images, deadline=None if structure_only else self.spec.deadline,
            fit_checkpoint=None if structure_only else self.fit_checkpoint)

    def rung(self) -> Rung:
        """A plugin's ``ctx.rung`` (the scheduled step only): this trial's rung, continuing from the state the
        rung below kept for this configuration, and keeping this rung's for the one above."""
        ladder, memo = self.ladder, Memo(self.memo_root / "rungs", max_bytes=self.memo_bytes)
        rungs, index = ladder["rungs"], ladder["index"]
        start = None
        if index > 0:
            entry = memo.get(self.branch_key(rungs[index - 1]))
            if entry is not None:
                try:
                    start = FitState.read(entry.folder)
                except ValueError:
                    memo.remove(entry.key)
        keep = None
        if index < len(rungs) - 1:
            key = self.branch_key(rungs[index])

            def keep(state: FitState) -> None:
                with contextlib.suppress(NotCheckpointable):
                    memo.put_with(key, state.write, {"trial": self.spec.number, "epochs": rungs[index],
                                                     "step": state.step})
        self.fit_rung = Rung(epochs=rungs[index], warmup=0.1 * rungs[0], decay=ladder["decay"], start=start,
                             keep=keep)
        return self.fit_rung

    def branch_key(self, epochs: float) -> str:
        """The key of the state where the rung of ``epochs`` begins its decay, for this configuration
        up to the scheduled step, less its length."""
        ladder = self.ladder
        steps = []
        for st, n, p, cls in self.steps[:self.running + 1]:
            if st.value == ladder["stage"] and n == ladder["plugin"]:
                p = {k: v for k, v in p.items() if k != cls.fidelity}
            steps.append([st.value, n, p])
        return content_key(self.base_id, steps, *self.trained_on, *self.from_parent, "warmup-stable-decay",
                           ladder["rungs"][0], ladder["decay"], epochs)

    def fit_checkpoint(self) -> FitCheckpoint:
        """A plugin's ``ctx.fit_checkpoint``: where the running step's next fit is saved at the deadline."""
        self.fits += 1
        key = self.fine_tune_key(self.steps[:self.running + 1])  # the configuration up to the running step
        return _StepCheckpoint(self, Memo(self.memo_root / "resume"), key, self.fits - 1)

    def measure(self, result, final: Path, *, after: list = (), **kw) -> dict[str, Any]:
        """Export and measurement, one timed step (named after the plugin whose output it is); the latency
        ratio joins the structure's history, whose median the budget is judged on."""
        last = f", after {after[-1][0].value} {after[-1][1]}" if after else ""
        prior = self.history.seen() if self.history is not None else None
        with self.timer(f"export+measure ({self.runtime.name}{last})"):
            record = self._save_and_measure(result, final, prior=prior, **kw)
        record["metrics"]["latency_key"] = self.structure_key
        ratio = record["metrics"].get("latency_vs_base")
        if self.history is not None and ratio is not None:
            self.history.add(ratio, self.spec.number)
        return record

    def apply(self, steps: list, model, ctx: TrialContext) -> "torch.nn.Module | Artefact":
        """Applies plugin steps in order, each under the step time limit, the curve counting on."""
        for step in steps:
            if self.curve:
                self.offset = int(self.curve[-1][0])
            self.trainers = sum(cls.trains(p) for _, _, p, cls in self.pending)
            self.pending.remove(step)
            self.running, self.fits = self.steps.index(step), 0
            scheduled = self.ladder is not None and (step[0].value, step[1]) == (self.ladder["stage"],
                                                                                 self.ladder["plugin"])
            ctx.rung = self.rung if scheduled else None
            ctx.original = self.teacher if self.parent is not None and step[0] == Stage.PRUNE else None
            try:
                model = _apply([step], model, ctx, self.durations, timer=self.timer)
            finally:  # a fine-tune stopped after training continued too
                if scheduled and self.fit_rung is not None:
                    self.out["rung"]["continued"] = self.fit_rung.continued
        return model

    @property
    def from_parent(self) -> list:
        """What memo keys add for a trial that starts from a parent's model (lineage)."""
        return [] if self.parent is None else ["pruned further from", self.spec.lineage["key"]]

    def find_parent(self) -> None:
        """Lineage: loads the parent's fine-tuned model when the spec names one, and keeps it only when
        pruning it further gives the structure that pruning the base gives (checked on copies, seconds);
        the record says which, and why not."""
        lineage = self.spec.lineage
        if not lineage or not self.trains:
            return
        self.out["lineage"] = use = {"parent": lineage["parent"], "used": False}
        prune = next((s for s in self.steps if s[0] == Stage.PRUNE), None)
        if prune is None or not prune[3].lineage:
            use["reason"] = "the trial's pruning plugin cannot prune a pruned model further"
            return
        hit = ModelCache(self.memo_root / "models", max_bytes=self.memo_bytes).get(lineage["key"])
        if hit is None:
            use["reason"] = "the parent's fine-tuned model is no longer in the cache (search.cache_mb)"
            return
        t0 = time.perf_counter()
        ctx = self.context(True, self.work / "lineage")
        direct = _apply([prune], copy.deepcopy(self.teacher), ctx, durations={}, timer=self.timer)
        ctx.original = self.teacher
        further = _apply([prune], copy.deepcopy(hit[0]), ctx, durations={}, timer=self.timer)
        self.durations["lineage_check"] = round(time.perf_counter() - t0, 3)
        if _shapes(further) != _shapes(direct):
            use["reason"] = ("pruning the parent's model further does not give the structure that pruning the base "
                             "gives; the base was pruned")
            self.log(f"lineage: trial {lineage['parent']}'s model not used: {use['reason']}")
            return
        self.parent, use["used"] = hit[0], True
        self.log(f"lineage: starts from trial {lineage['parent']}'s fine-tuned model, pruned further")

    # -- the steps ---------------------------------------------------------------------------

    def repeat(self) -> dict[str, Any] | None:
        """A configuration that ran before (trained and quantized on the same batches: the same
        bytes): its artefact from the memo, timed again now; ``None`` when there is none."""
        spec = self.spec
        if not (self.config.search.cache and spec.number >= 0 and spec.keep_artefact and not spec.structure_only):
            return None
        self.artefacts = ArtefactCache(self.memo_root / "artefacts", max_bytes=self.memo_bytes)
        self.whole_key = content_key(self.base_id, self.runtime.name, [
            [st.value, n, cls.Config.model_validate(p).model_dump(mode="json")] for st, n, p, cls in self.steps],
            *self.trained_on, *self.from_parent)
        hit = self.artefacts.get(self.whole_key)
        if hit is not None:
            record = _remeasure(*hit, key=self.whole_key, out_dir=self.out_dir, runtime=self.runtime, curve=self.curve,
                                durations=self.durations, measure=functools.partial(self.measure, after=self.steps))
            if "rung" in self.out:
                record["rung"] = self.out["rung"]
            return record
        if self.artefacts.corrupt:
            self.out["artefact_cache"] = {"key": self.whole_key, "corrupt_rebuilt": True}
        return None

    def probe(self) -> dict[str, Any] | None:
        """Cheap figures first, when a fine-tune would follow: the untrained structure's latency and
        size (from the memo when this structure was probed before). Returns the record of a trial
        whose structure cannot meet the budget, stopped here; else ``None``."""
        spec, config = self.spec, self.config
        if self.trains and self.rule.mode != "none":
            self.rule.slice_bias = _slice_bias(spec.run_dir, config.model_dump_json())
        if not (self.trains and config.search.structure_first):
            return None
        t0 = time.perf_counter()
        structural = self.structural
        probes = (ProbeMemo(self.memo_root / "probes", self.structure_key)
                  if config.search.cache else None)
        probe = probes.get() if probes else None
        verdict_of = functools.partial(structure_verdict, budget=config.budget,
                                       latency_margin=config.search.latency_margin)
        if probe is not None and "accuracy" not in probe["metrics"] and verdict_of(probe["metrics"]):
            probe = None  # probed under another budget, without the accuracy a stopped trial's record needs
        if probe is None:
            ctx = self.context(True, self.work / "probe")
            probe_timer = lambda step: self.timer(f"{step} (structure probe)")  # noqa: E731
            module = _apply([s for s in structural if s[0] != Stage.QUANTIZE], copy.deepcopy(self.teacher), ctx,
                            durations={}, timer=probe_timer)
            result = _apply([s for s in structural if s[0] == Stage.QUANTIZE], module, ctx, durations={},
                            timer=probe_timer)
            # an untrained structure's accuracy only matters to the record of a trial stopped here
            probe = self.measure(result, self.work / "probe" / f"model{self.runtime.suffix}", keep=False,
                                 params=count_params(module), module=module,
                                 accuracy_if=lambda metrics: verdict_of(metrics) is not None, after=structural)
            probe.pop("timings")
            t_proxy = time.perf_counter()
            probe["proxy"] = round(recalibrated_top1(module, self.data.train, self.data.val, seed=config.search.seed,
                                                     batch_size=config.data.batch_size), 4)
            self.durations["proxy"] = round(time.perf_counter() - t_proxy, 3)
            if probes:
                probes.put(probe, spec.number)
        else:
            self.out["probe_from"] = probe.pop("trial")
        self.durations["structure_first"] = round(time.perf_counter() - t0, 3)
        self.out["probe"] = probe["metrics"]
        self.out["proxy"] = probe.get("proxy")
        self.rule.position = self.rule.position_of(probe["metrics"])
        verdict = verdict_of(probe["metrics"])
        if not verdict:
            return self.gate(probe, probes)
        probe.update(self.out, artefact=None, stopped={"stage": "structure", "reason": verdict})
        return _counted(probe, self.teacher_outputs)

    def gate(self, probe: dict, probes: ProbeMemo | None) -> dict[str, Any] | None:
        """Whether a structure that meets the budget earns its fine-tune (``search.proxy_gate``): the
        record of a trial stopped here, as ``pruned``, when another probed structure no larger and no
        slower scores a clearly better proxy; else ``None``. Only a fine-tune's first rung is gated (a
        promoted trial has already earned its place among peers), and only one not in the model cache."""
        search = self.config.search
        if probes is None or search.proxy_gate is None or (self.ladder is not None and self.ladder["index"] > 0):
            return None
        prefix = [s for s in self.steps if s[0] != Stage.QUANTIZE]
        if ModelCache(self.memo_root / "models", max_bytes=self.memo_bytes).memo.get(self.fine_tune_key(prefix)):
            return None  # its fine-tune is in the cache (e.g. a search.sweep variant): there is nothing to save
        reason = proxy_verdict(probe["metrics"], probe.get("proxy"), probes.others(), budget=self.config.budget,
                               latency_margin=search.latency_margin, gate=search.proxy_gate)
        if reason is None:
            return None
        self.log(f"not fine-tuned: {reason}")
        self.out.update(state="pruned", reason=reason, artefact=None, stopped={
            "stage": "proxy", "accuracy": probe["proxy"], "rule": "proxy", "reason": reason})
        return _counted(self.out, self.teacher_outputs)

    def train_and_measure(self) -> dict[str, Any]:
        """The fine-tuning stages (or their module from the memo), the quantizer, then the export
        and measurement of the result; a stop during training ends the trial as ``pruned``."""
        spec = self.spec
        ctx = self.context(spec.structure_only, self.work)
        if self.trains:
            self.out["train_device"] = _device_name(self.train_device)
        model, steps = self.fine_tuned()
        prefix = [s for s in steps if s[0] != Stage.QUANTIZE]
        self.pending = list(steps)
        try:
            self.judged_before()
            t_prefix = time.perf_counter()
            model = self.apply(prefix, model, ctx)
            if self.out.get("cache") and prefix:
                self.out["cache"]["stored"] = ModelCache(self.memo_root / "models", max_bytes=self.memo_bytes).put(
                    self.out["cache"]["key"], model, {"trial": spec.number, "curve": list(self.curve),
                                                      "seconds": round(time.perf_counter() - t_prefix, 3)},
                    example=ctx.example_input, kwargs=self.config.model.kwargs)
            result = self.apply([s for s in steps if s[0] == Stage.QUANTIZE], model, ctx)
        except StopTrial as stop:
            self.out.update(state="pruned", reason=stop.reason, artefact=None, stopped={
                "stage": stop.stage, "plugin": stop.plugin, "step": stop.step, "accuracy": round(stop.accuracy, 4),
                "rule": stop.rule, "reason": stop.reason, **({"after_training": True} if stop.final else {})})
            self.keep_verdict(stop)
            return _counted(self.out, self.teacher_outputs)
        exported = result if isinstance(result, torch.nn.Module) else model  # the float module that was saved or quantized
        record = self.measure(result, self.out_dir / f"model{self.runtime.suffix}",
                              keep=spec.keep_artefact and spec.number >= 0, params=count_params(exported),
                              module=exported, after=steps)
        record.update(self.out)
        self.durations.update(record.pop("timings"))
        record = _counted(record, self.teacher_outputs)
        self.remember(record)
        (self.out_dir / "record.json").write_text(json.dumps(record, indent=1))
        return record

    def fine_tuned(self) -> tuple["torch.nn.Module", list]:
        """The model the remaining steps start from, and those steps: the fine-tuned module from
        the memo when a trial with the same stages before the quantizer trained it, else the base."""
        model, steps = copy.deepcopy(self.parent if self.parent is not None else self.teacher), self.steps
        prefix = [s for s in steps if s[0] != Stage.QUANTIZE]
        if not (self.trains and self.config.search.cache and any(cls.trains(p) for _, _, p, cls in prefix)):
            return model, steps
        cache = ModelCache(self.memo_root / "models", max_bytes=self.memo_bytes)
        key = self.fine_tune_key(prefix)
        hit = cache.get(key)
        if hit is None:
            self.out["cache"] = {"key": key, "hit": False, "kind": "model", "corrupt_rebuilt": cache.corrupt > 0}
            return model, steps
        model, meta = hit
        self.curve.extend(meta.get("curve", []))
        self.out["cache"] = {"key": key, "hit": True, "kind": "model", "from_trial": meta.get("trial"),
                             "saved_s": meta.get("seconds")}
        return model, [s for s in steps if s[0] == Stage.QUANTIZE]

    def keep_verdict(self, stop: StopTrial) -> None:
        """Remembers a fine-tune that ran to its end and was stopped then (under the floor, or off the
        front), by its model-cache key: its whole-split accuracy is all a trial training the same
        model with another quantizer needs to be judged (:meth:`judged_before`)."""
        cache, whole = self.out.get("cache"), self.out.get("whole_val_after_training")
        if not stop.final or whole is None or not cache or cache.get("hit") or "verdict_of" in self.out:
            return
        Memo(self.memo_root / "verdicts", max_bytes=self.memo_bytes).put(cache["key"], meta={
            "trial": self.spec.number, "step": stop.step, "whole": whole, "stage": stop.stage,
            "plugin": stop.plugin, "curve": list(self.curve)})

    def judged_before(self) -> None:
        """A trial whose fine-tune an earlier trial ran to its end and stopped (:meth:`keep_verdict`):
        that model's whole-split accuracy is judged again against this trial's structure and the front
        as they are now; raises :class:`StopTrial` without training when it still cannot make it (a
        verdict that no longer holds, e.g. the front moved, trains as usual)."""
        cache = self.out.get("cache")
        if not cache or cache.get("hit"):
            return
        entry = Memo(self.memo_root / "verdicts", max_bytes=self.memo_bytes).get(cache["key"])
        if entry is None:
            return
        m = entry.meta  # the run folder may come from elsewhere: its values are checked, not trusted
        try:
            step, whole, trial = int(m["step"]), float(m["whole"]), int(m["trial"])
            curve = [[float(s), float(a)] for s, a in m["curve"]]
            stage, plugin = str(m["stage"]), str(m["plugin"])
        except (KeyError, TypeError, ValueError):
            return
        try:
            self.rule.check(step, whole, final=True, whole=True)
        except StopTrial as stop:
            self.curve.extend(curve)
            self.out["whole_val_after_training"] = whole
            self.out["verdict_of"] = trial
            stop.stage, stop.plugin = stage, plugin
            stop.reason = f"{stop.reason}; the same fine-tune ran to its end in trial {trial}: not trained again"
            self.log(f"verdict: {stop.reason}")
            raise

    def fine_tune_key(self, steps: list) -> str:
        """The key of what ``steps`` train (base, steps and parameters, where it trains): the memo's key of a
        fine-tuned module, and of the checkpoint of a fit stopped in the last of ``steps``."""
        runtime = [self.runtime.name] if any(st == Stage.QUANTIZE for st, *_ in steps) else []  # QAT trains for it
        return content_key(self.base_id, [[st.value, n, p] for st, n, p, _ in steps], *self.trained_on,
                           *self.from_parent, *runtime)

    def remember(self, record: dict[str, Any]) -> None:
        """Keeps a finished artefact and its byte-only figures in the memo, for a later repeat."""
        if self.artefacts is None or record["artefact"] is None:
            return
        m = record["metrics"]
        self.artefacts.put(self.whole_key, sorted(f for f in self.out_dir.glob("model*") if f.is_file()), {
            "trial": self.spec.number, "main": f"model{self.runtime.suffix}", "precision": m["precision"],
            "params": m["params"], "macs": m.get("macs"), "macs_int8": m.get("macs_int8"),
            "macs_by_op": (record.get("footprint") or {}).get("macs", {}).get("by_op"),
            "accuracy": m["accuracy"], "test_accuracy": m["test_accuracy"], "curve": list(self.curve),
            "train_device": record.get("train_device"), "seconds": round(time.perf_counter() - self.t_start, 3)})


class _StepCheckpoint(FitCheckpoint):
    """A fit's checkpoint in ``RUN/cache/resume``, keyed by the trial's configuration up to the running step
    (a re-queued trial has the same): it also keeps the curve the fit reported before it stopped, and
    a trial that continues from it puts that curve back and records ``continued_from``."""

    def __init__(self, trial: _Trial, memo: Memo, key: str, ordinal: int) -> None:
        super().__init__(memo, key, ordinal)
        self.trial, self.mark = trial, len(trial.curve)

    def meta(self) -> dict:
        return {"trial": self.trial.spec.number, "curve": self.trial.curve[self.mark:]}

    def resumed(self, state: FitState, meta: dict) -> None:
        self.trial.curve.extend(meta.get("curve", []))
        self.trial.out.setdefault("continued_from", {"trial": meta.get("trial"), "epoch": state.epoch,
                                                     "step": state.step})
        self.trial.log(f"continued the fine-tune trial {meta.get('trial')} stopped at the time limit "
                       f"(epoch {state.epoch}, step {state.step} of {state.total_steps})")


def _remeasure(files: dict[str, Path], meta: dict, *, key: str, out_dir: Path, runtime, measure, curve: list,
               durations: dict) -> dict[str, Any]:
    """The record of a trial whose whole configuration ran before: its artefact, timed again now."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        link_or_copy(path, out_dir / name)
    main = out_dir / meta["main"]
    extras = [out_dir / name for name in files if name not in (meta["main"], *MODULE_FILES)]
    record = measure(Artefact(main, runtime.name, meta["precision"], extra_files=extras), main, keep=True,
                     params=meta["params"], known=meta)
    curve.extend(meta.get("curve", []))
    durations.update(record.pop("timings"))
    if meta.get("train_device"):
        record["train_device"] = meta["train_device"]
    record.update(durations=durations, curve=curve, cache={
        "key": key, "hit": True, "kind": "artefact", "from_trial": meta.get("trial"), "saved_s": meta.get("seconds")})
    (out_dir / "record.json").write_text(json.dumps(record, indent=1))
    return record


def _shapes(module: "torch.nn.Module") -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _counted(record: dict[str, Any], teacher_outputs: TeacherOutputs | None) -> dict[str, Any]:
    """Adds how many teacher batches the trial read from the run's store and how many it ran."""
    if teacher_outputs is not None and teacher_outputs.reused + teacher_outputs.computed:
        record["teacher_batches"] = {"reused": teacher_outputs.reused, "computed": teacher_outputs.computed,
                                     "corrupt_rebuilt": teacher_outputs.corrupt,
                                     "compute_s": round(teacher_outputs.compute_s, 3)}
    return record


def _step_timer(spec: TrialSpec, config: RunConfig, out_dir: Path) -> Callable[[str], Any]:
    """``timer(step)``: a context that runs one step of this trial under ``search.step_timeout``, with a heartbeat."""
    label = {-1: "base", -2: "budget probe"}.get(spec.number, f"trial {spec.number}")
    return functools.partial(timed_step, label, limit=config.search.step_timeout, folder=out_dir,
                             log_file=Path(spec.run_dir) / "run.log")


def _apply(steps: list, model: "torch.nn.Module | Artefact", ctx: TrialContext, durations: dict,
           offset: list | None = None, curve: list | None = None,
           timer: Callable[[str], Any] = lambda step: contextlib.nullcontext()) -> "torch.nn.Module | Artefact":
    """Applies ``(stage, name, params, cls)`` steps in order, each under ``timer`` (the step time
    limit); a stop inside names its stage."""
    result = model
    for stage, name, params, cls in steps:
        if isinstance(result, Artefact):
            raise RuntimeError(f"{name} cannot follow a stage that already produced a {result.runtime} artefact")
        if offset is not None and curve:
            offset[0] = int(curve[-1][0])
        t0 = time.perf_counter()
        torch.manual_seed(ctx.seed)
        try:
            with timer(f"{stage.value} {name}"):
                result = cls.from_params(params).apply(result, ctx)
        except StopTrial as stop:
            stop.stage, stop.plugin = stage.value, name
            durations[stage.value] = round(time.perf_counter() - t0, 3)
            raise
        durations[stage.value] = round(time.perf_counter() - t0, 3)
        if isinstance(result, torch.nn.Module):
            result = result.cpu().eval()
    return result


def _probe_key(base_id: str, runtime: str, structural: list) -> str:
    """A structure's key: base, runtime and structural steps, less the parameters in a plugin's
    ``probe_ignores`` (latency and size depend on the structure alone)."""
    shape = [[st.value, n, cls.structure_params(p)] for st, n, p, cls in structural]
    return content_key(base_id, runtime, shape)


def _base_id(run_dir: str) -> str:
    key_file = Path(run_dir) / "base" / "key.json"
    return json.loads(key_file.read_text()).get("key", "") if key_file.exists() else ""


def _save_and_measure(result: "torch.nn.Module | Artefact", final: Path, *, spec: TrialSpec, config: RunConfig,
                      runtime, data: DataBundle, device: torch.device, keep: bool, params: int,
                      module: torch.nn.Module | None = None,
                      accuracy_if: Callable[[dict], bool] | None = None,
                      test_if: Callable[[dict], bool] | None = None,
                      known: dict | None = None, prior: list[float] | None = None) -> dict[str, Any]:
    """Saves ``result`` for the runtime at ``final``, reloads it and measures latency, size and accuracy.

    Args:
        accuracy_if: Given the metrics without accuracy, whether to evaluate accuracy (a structure
            probe needs it only when the structure is stopped); ``None`` = always.
        test_if: Given the metrics with validation accuracy, whether to evaluate held-out test accuracy
            (only a trial within the budget can be on the front; the others record ``None``); ``None`` = always.
        known: Accuracy figures already known for these exact bytes (a reused artefact): not evaluated again.
        module: The float module that was saved or quantized (MACs are counted on it); ``None``
            for a reused artefact, whose counts come from ``known``.
        prior: Earlier ``latency_vs_base`` measurements of this structure: the metrics then get their
            median with this one (``latency_vs_base_pooled``), which the budget is judged on.

    Besides latency, size and accuracy, the metrics get ``macs``, ``macs_int8``, ``memory_mb``,
    ``energy_mj`` and ``energy_source`` (:mod:`autocompress.measure.footprint`), and ``not_measured``
    (figure -> why) for those that are ``None``; ``record["footprint"]`` says how each was measured.
    Memory is measured (a fresh process, ~2 s) for the base, for trials within the budget and,
    when memory is an objective or has a budget, for every artefact.

    Raises:
        RuntimeError: A figure the run's objectives or budget need could not be measured.
    """
    threads, batch = config.device.threads, config.device.batch_size
    t0 = time.perf_counter()
    artefact = _save(result, final, runtime=runtime, example=data.train.example(batch), keep=keep,
                     kwargs=config.model.kwargs)
    timings = {"export": round(time.perf_counter() - t0, 3)}

    t0 = time.perf_counter()
    predict = runtime.load(artefact, threads=threads, device=device.type)
    lat, latency_source, energy = _time(artefact, predict, spec=spec, config=config, runtime=runtime, data=data,
                                        device=device)
    size = artefact.size_bytes()
    metrics = {"latency_ms": lat["trial"].median_ms, "size_bytes": size, "size_mb": round(size / 1e6, 6),
               "params": params, "precision": artefact.precision, "runtime": artefact.runtime}
    if BASE in lat:
        metrics["latency_vs_base"] = round(lat["trial"].median_ms / lat[BASE].median_ms, 4)
        if prior:
            metrics["latency_vs_base_pooled"] = round(statistics.median([*prior, metrics["latency_vs_base"]]), 4)
            metrics["latency_pooled_from"] = len(prior) + 1
    required = required_metrics(config)
    figures = measure_footprint(
        artefact, module=module, example=data.train.example(batch), known=known,
        energy=energy["figures"].get("trial"), energy_source=energy["source"], no_energy=energy["not_available"],
        base_energy=energy["figures"].get(BASE), threads=threads, device=device.type)
    metrics.update(figures.metrics)
    if "memory_mb" in required:  # an objective or a budget: every artefact, before feasibility is judged
        figures.memory()
    within = False
    if known is not None or accuracy_if is None or accuracy_if(metrics):
        val = known["accuracy"] if known is not None else round(top1(predict, data.val, batch_size=config.data.batch_size), 4)
        test = known.get("test_accuracy") if known is not None else None
        within = test_if is None or test_if({"accuracy": val, **metrics})
        if test is None and within:
            test = round(top1(predict, data.test, batch_size=config.data.batch_size), 4)
        metrics = {"accuracy": val, "test_accuracy": test, **metrics}
    if spec.number == -1 or (keep and within):  # the base and trials that can be on the front
        figures.memory()
    elif "memory_mb" not in required:
        figures.skip_memory("measured for the base and for trials within the budget only (memory is neither "
                            "an objective nor budgeted in this run)")
    metrics.update(figures.metrics)
    missing = {k: figures.why(k) for k in sorted(required) if k in figures.metrics and metrics.get(k) is None}
    if missing:
        raise RuntimeError("; ".join(f"{k} could not be measured, but the run's objectives or budget need it: {why}"
                                     for k, why in missing.items()))
    timings["measure"] = round(time.perf_counter() - t0, 3)
    kept = keep or spec.number < 0
    record = {
        "metrics": metrics,
        "latency": lat["trial"].to_dict(),
        "timings": timings,
        "artefact": str(final.relative_to(spec.run_dir)) if kept else None,
        "device": _device_name(device),
        "latency_source": latency_source,
        "footprint": figures.detail,
    }
    if kept:  # checked before any later use of the files (load, export, resume)
        record["files"] = file_hashes([*artefact.files, *module_files(final.parent / MODULE_STEM)], spec.run_dir)
    if BASE in lat:
        record["base_latency_same_window"] = lat[BASE].to_dict()
        record["base_runtime"] = energy["base_runtime"]
        record["latency_vs_base"] = metrics["latency_vs_base"]
    if not kept:
        for f in artefact.files:
            f.unlink(missing_ok=True)
    return record


def _save(result: "torch.nn.Module | Artefact", final: Path, *, runtime, example: torch.Tensor, keep: bool,
          kwargs: dict) -> Artefact:
    """The export step: a module saved for the runtime at ``final`` (and, when kept, the float module
    itself, code-free, so `autocompress export` can write other formats exactly), or a quantizer's
    artefact moved there."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(result, torch.nn.Module):
        artefact = runtime.save(result, example, final)
        if keep:
            try:
                save_module(result, final.parent / MODULE_STEM, example, kwargs=kwargs, training_hooks=False)
            except NotRebuildable:  # a module that does not rebuild from weights + structure only limits the formats
                for f in module_files(final.parent / MODULE_STEM):
                    f.unlink(missing_ok=True)
        return artefact
    if result.runtime != runtime.name:
        raise RuntimeError(f"quantizer produced a {result.runtime} artefact, target runtime is {runtime.name}")
    if Path(result.path) == final:  # already in place (a reused artefact)
        return result
    shutil.move(str(result.path), final)
    extras = []
    for extra in result.extra_files:  # e.g. an OpenVINO IR's .bin beside its .xml
        dest = final.with_suffix(Path(extra).suffix)
        shutil.move(str(extra), dest)
        extras.append(dest)
    return Artefact(final, result.runtime, result.precision, extra_files=extras)


def _time(artefact: Artefact, predict, *, spec: TrialSpec, config: RunConfig, runtime, data: DataBundle,
          device: torch.device) -> tuple[dict, "str | dict", dict]:
    """The latency step: the artefact timed in interleaved rounds beside the base (same window),
    locally under the node's measurement lock or on the latency agent, with energy where a
    counter can see it.

    Returns:
        ``({"trial": Latency, "base": Latency}, latency source, {"figures", "source", "not_available"})``.
    """
    threads = config.device.threads
    predictors = {"trial": predict}
    base_runtime = runtime if config.device.agents else _reference_runtime(spec.run_dir, runtime)
    base_path = Path(spec.run_dir) / "base" / f"model{base_runtime.suffix}"
    if spec.number != -1 and base_path.exists():  # trials and the search's probes (-2): beside the base
        predictors[BASE] = _base_predictor(str(base_path), base_runtime.name, threads, device.type,
                                           base_path.stat().st_mtime)
    meter, no_energy = energy_meter(device.type) if not config.device.agents else (None, AGENT_NO_ENERGY)
    tracker = EnergyTracker(meter, config.device.warmup) if meter is not None else None
    example = data.test.example(config.device.batch_size)
    if config.device.agents:  # timed on the target device (no node slot needed); the other figures stay local
        lat, source = _agent_latency(artefact, base_path if BASE in predictors else None, runtime=runtime,
                                     config=config, example=example)
    else:
        source = "local"
        with measurement_lock():
            lat = measure_latency(tracker.wrap(predictors) if tracker else predictors, example,
                                  warmup=config.device.warmup, repeats=config.device.repeats,
                                  rounds=config.device.rounds, threads=threads,
                                  sync=torch.cuda.synchronize if device.type == "cuda" else None)
    energy = {"figures": tracker.finish() if tracker else {}, "source": meter.source if meter else None,
              "not_available": no_energy, "base_runtime": base_runtime.name if BASE in predictors else None}
    return lat, source, energy


def _reference_runtime(run_dir: str, runtime):
    """The runtime of the base a trial is timed beside: the run's reference (the base on its fastest
    target runtime, ``base.json``), so every trial's ratio and the budget's ``max_latency_vs_base`` mean
    the same base whatever runtime the trial was saved for; ``runtime`` itself before the reference
    is known (the base's own measurement) or when it is that one."""
    path = Path(run_dir) / "base.json"
    try:
        name = json.loads(path.read_text())["metrics"]["runtime"]
    except (OSError, ValueError, KeyError, TypeError):
        return runtime
    return runtime if name == runtime.name else get_runtime(name)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def _agent_latency(artefact: Artefact, base_path: Path | None, *, runtime, config: RunConfig,
                   example: torch.Tensor) -> tuple[dict, dict]:
    """Times the artefact (and the base's, interleaved, when given) on one of ``device.agent``.

    Returns:
        ``({"trial": Latency, "base": Latency}, {"agent": url, "machine": {...}})``.

    Raises:
        AgentError: No agent measured it.
    """
    from autocompress.device import agent_token, measure_on_agents

    models = {"trial": artefact.files}
    if base_path is not None:
        models[BASE] = [base_path, *([base_path.with_suffix(".bin")] if runtime.name == "openvino" else [])]
    d = config.device
    return measure_on_agents(d.agents, agent_token(d.agent_token_file), runtime=runtime.name, models=models,
                             example=example.detach().cpu().numpy(), warmup=d.warmup, repeats=d.repeats,
                             rounds=d.rounds, threads=d.threads, timeout=d.agent_timeout)
