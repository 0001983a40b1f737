"""One trial: copy the base, apply the chosen plugins prune → distill → quantize, save the
artefact for the target runtime, reload it, and measure it.

A trial takes a plain :class:`TrialSpec` and returns a plain record (a JSON-able dict),
so any executor (in-process, Ray) can run it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import platform
import shutil
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from autocompress.config import RunConfig
from autocompress.data import DataBundle, load_data
from autocompress.plugin import TeacherOutputs
from autocompress.measure import count_params, measure_latency, module_predictor, top1
from autocompress.models import create_model
from autocompress.trial.base import load_base_weights
from autocompress.trial.memo import ArtefactCache, ModelCache, content_key, link_or_copy
from autocompress.device import AgentError
from autocompress.trial.early_stop import StopRule, StopTrial
from autocompress.measure import EnergyTracker, energy_meter, measure_footprint
from autocompress.objectives import constraints, metric_keys, required_metrics
from autocompress.plugin import NONE, STAGE_ORDER, Artefact, Stage, TrialContext, curve_sample_size
from autocompress.plugin import Registry, discover
from autocompress.store import atomic_write
from autocompress.store import TRIAL_MODULE as MODULE_STEM, NotRebuildable, file_hashes, module_files, save_module
from autocompress.measure import get_runtime
from autocompress.trial.watchdog import StepTimeout, timed_step

BASE = "base"

# Wraps every latency measurement. A no-op in-process; an executor that runs trials side by
# side (Ray) replaces it with a per-node lock so two measurements never overlap on one node.
measurement_lock: Any = contextlib.nullcontext
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

    def to_dict(self) -> dict:
        return asdict(self)


def trial_dir(run_dir: Path, number: int) -> Path:
    if number < 0:
        return Path(run_dir) / ("base" if number == -1 else "probe")
    return Path(run_dir) / f"trials/{number:04d}"


def trial_runtime(choices: dict, config: RunConfig) -> str:
    """The runtime a trial is saved for: the searched one, else the configured one."""
    return (choices.get("runtime") or [config.device.runtimes[0]])[0]


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


def run_trial(spec: TrialSpec | dict) -> dict[str, Any]:
    """Runs one trial and returns its record; never raises for a failing trial.

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
    started = time.time()
    record: dict[str, Any] = {
        "number": spec.number, "choices": spec.choices, "state": "running", "reason": None,
        "host": socket.gethostname(), "started": started, "structure_only": spec.structure_only,
    }
    out_dir = trial_dir(Path(spec.run_dir), spec.number)
    try:
        result = _run(spec, out_dir)
        record["state"] = result.pop("state", "complete")
        record["reason"] = result.pop("reason", None)
        record.update(result)
    except (Exception, MemoryError, StepTimeout) as err:  # a failing trial is data, not a crash
        record["state"] = "fail"
        record["reason"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
        if isinstance(err, StepTimeout):  # "step timeout: prune channel_prune ran past 20m (search.step_timeout)"
            record["reason"], record["timed_out"] = err.reason, err.to_dict()
        if isinstance(err, AgentError):  # "agent http://127.0.0.1:8470 unreachable: [Errno 111] Connection refused"
            record["reason"], record["agent_error"] = str(err)[:500], err.url
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
        if not spec.keep_artefact or spec.number >= 0:
            for f in out_dir.glob("model*"):
                f.unlink(missing_ok=True)
    finally:
        shutil.rmtree(out_dir / "tmp", ignore_errors=True)
    record["finished"] = time.time()
    record["duration_s"] = round(record["finished"] - started, 3)
    return record


def _run(spec: TrialSpec, out_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    config = RunConfig.model_validate(spec.config)
    threads = config.device.threads
    torch.set_num_threads(threads)
    device = torch.device(config.device.type if config.device.type == "cpu" or torch.cuda.is_available() else "cpu")
    if config.device.type == "cuda" and device.type != "cuda":
        raise RuntimeError("device.type is cuda but this worker sees no CUDA device")
    registry = _registry(tuple(spec.plugin_files))
    data: DataBundle = load_data(config.data, config.model.img_size)
    runtime = get_runtime(trial_runtime(spec.choices, config))
    teacher = _base_model(spec.run_dir, config.model_dump_json())
    work = out_dir / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    steps = []
    for stage in STAGE_ORDER:
        name, params = spec.choices.get(stage.value, [NONE, {}])
        if name != NONE:
            steps.append((stage, name, params, registry.get(name)))
    if spec.structure_only:
        steps = [step for step in steps if step[3].changes_structure]
    curve: list[list[float]] = []
    durations: dict[str, float] = {}
    curve_images = curve_sample_size(config.budget.max_accuracy_drop, len(data.val))
    rule = StopRule(mode=config.search.early_stop, floor=spec.floor, history=spec.history, front=spec.front,
                    latency_margin=config.search.latency_margin, slice_size=curve_images,
                    objectives=metric_keys(config.objectives))
    offset = [0]
    teacher_outputs: TeacherOutputs | None = None
    if config.search.cache and teacher is not None and device.type == "cpu":  # hashing a batch costs more than a GPU forward
        teacher_outputs = TeacherOutputs(teacher, Path(spec.run_dir) / "cache" / "teacher" / f"{_base_id(spec.run_dir)}-cpu",
                                         max_bytes=config.search.cache_mb * 1e6)

    trainers = [0]  # fine-tuning stages still to run: a stage's last epoch ends the training only if it is the last

    def report(step: int, accuracy: float, final: bool = False, last: int | None = None,
               whole: float | None = None) -> None:
        curve.append([offset[0] + step, round(float(accuracy), 4)])
        done = final and trainers[0] <= 1
        trainers[0] -= bool(final)
        if done and whole is not None:  # a finished fine-tune: judged on the whole validation split
            out["whole_val_after_training"] = round(float(whole), 4)
            rule.check(offset[0] + step, float(whole), last=None if last is None else offset[0] + last, final=True,
                       whole=True)
        elif not final or done:
            rule.check(offset[0] + step, float(accuracy), last=None if last is None else offset[0] + last, final=done)

    def context(structure_only: bool, folder: Path) -> TrialContext:
        folder.mkdir(parents=True, exist_ok=True)
        return TrialContext(
            data=data, teacher=teacher, device=device, runtime=runtime.name,
            example_input=data.train.example(config.device.batch_size), workdir=folder,
            seed=config.search.seed, batch_size=config.data.batch_size, threads=threads,
            report=report, structure_only=structure_only, teacher_outputs=teacher_outputs, curve_images=curve_images)

    timer = _step_timer(spec, config, out_dir)
    save_and_measure = functools.partial(
        _save_and_measure, spec=spec, config=config, runtime=runtime, data=data, device=device,
        test_if=functools.partial(_within_budget, config=config, floor=spec.floor)
        if spec.number >= 0 else None)  # the base (and the reference probe) always

    def measure(result, final: Path, *, after: list = (), **kw) -> dict[str, Any]:
        """Export and measurement, one timed step (named after the plugin whose output it is)."""
        last = f", after {after[-1][0].value} {after[-1][1]}" if after else ""
        with timer(f"export+measure ({runtime.name}{last})"):
            return save_and_measure(result, final, **kw)
    out: dict[str, Any] = {"durations": durations, "curve": curve}
    trains = spec.number >= 0 and not spec.structure_only and any(cls.fine_tunes for *_, cls in steps)
    artefacts = whole_key = None
    if config.search.cache and spec.number >= 0 and spec.keep_artefact and not spec.structure_only:
        artefacts = ArtefactCache(Path(spec.run_dir) / "cache" / "artefacts", max_bytes=config.search.cache_mb * 1e6)
        whole_key = content_key(_base_id(spec.run_dir), runtime.name, [
            [st.value, n, cls.Config.model_validate(p).model_dump(mode="json")] for st, n, p, cls in steps])
        hit = artefacts.get(whole_key)
        if hit is not None:  # the same configuration, trained and quantized on the same batches: the same bytes
            return _remeasure(*hit, key=whole_key, out_dir=out_dir, runtime=runtime, curve=curve, durations=durations,
                              measure=functools.partial(measure, after=steps))
        if artefacts.corrupt:
            out["artefact_cache"] = {"key": whole_key, "corrupt_rebuilt": True}
    if trains and rule.mode != "none":
        rule.slice_bias = _slice_bias(spec.run_dir, config.model_dump_json())

    if trains and config.search.structure_first:  # cheap figures first: structure only, no training
        t0 = time.perf_counter()
        structural = [s for s in steps if s[3].changes_structure]
        probes = _ProbeMemo(spec.run_dir, runtime.name, structural) if config.search.cache else None
        probe = probes.get() if probes else None
        if probe is not None and "accuracy" not in probe["metrics"] and structure_verdict(probe["metrics"], config):
            probe = None  # probed under another budget, without the accuracy a stopped trial's record needs
        if probe is None:
            ctx = context(True, work / "probe")
            probe_timer = lambda step: timer(f"{step} (structure probe)")  # noqa: E731
            module = _apply([s for s in structural if s[0] != Stage.QUANTIZE], copy.deepcopy(teacher), ctx, durations={},
                            timer=probe_timer)
            result = _apply([s for s in structural if s[0] == Stage.QUANTIZE], module, ctx, durations={}, timer=probe_timer)
            # an untrained structure's accuracy only matters to the record of a trial stopped here
            probe = measure(result, work / "probe" / f"model{runtime.suffix}", keep=False, params=count_params(module),
                            module=module, accuracy_if=lambda metrics: structure_verdict(metrics, config) is not None, after=structural)
            probe.pop("timings")
            if probes:
                probes.put(probe, spec.number)
        else:
            out["probe_from"] = probe.pop("trial")
        durations["structure_first"] = round(time.perf_counter() - t0, 3)
        out["probe"] = probe["metrics"]
        rule.position = rule.position_of(probe["metrics"])
        verdict = structure_verdict(probe["metrics"], config)
        if verdict:
            probe.update(out, artefact=None, stopped={"stage": "structure", "reason": verdict})
            return _counted(probe, teacher_outputs)

    ctx = context(spec.structure_only, work)
    model: torch.nn.Module | Artefact = copy.deepcopy(teacher)
    prefix = [s for s in steps if s[0] != Stage.QUANTIZE]
    cache = None
    if trains and config.search.cache and any(cls.fine_tunes for *_, cls in prefix):
        cache = ModelCache(Path(spec.run_dir) / "cache", max_bytes=config.search.cache_mb * 1e6)
        key = content_key(_base_id(spec.run_dir), [[st.value, n, p] for st, n, p, _ in prefix])
        hit = cache.get(key)
        if hit is not None:
            model, meta = hit
            curve.extend(meta.get("curve", []))
            out["cache"] = {"key": key, "hit": True, "kind": "model", "from_trial": meta.get("trial"),
                            "saved_s": meta.get("seconds")}
            steps = [s for s in steps if s[0] == Stage.QUANTIZE]
            prefix = []
        else:
            out["cache"] = {"key": key, "hit": False, "kind": "model", "corrupt_rebuilt": cache.corrupt > 0}
    trainers[0] = sum(cls.fine_tunes for *_, cls in steps)
    try:
        t_prefix = time.perf_counter()
        model = _apply(prefix, model, ctx, durations, offset=offset, curve=curve, timer=timer)
        if cache is not None and prefix:
            out["cache"]["stored"] = cache.put(
                key, model, {"trial": spec.number, "curve": list(curve), "seconds": round(time.perf_counter() - t_prefix, 3)},
                example=ctx.example_input, kwargs=config.model.kwargs)
        result = _apply([s for s in steps if s[0] == Stage.QUANTIZE], model, ctx, durations, offset=offset, curve=curve,
                        timer=timer)
    except StopTrial as stop:
        out.update(state="pruned", reason=stop.reason, artefact=None, stopped={
            "stage": stop.stage, "plugin": stop.plugin, "step": stop.step, "accuracy": round(stop.accuracy, 4),
            "rule": stop.rule, "reason": stop.reason, **({"after_training": True} if stop.final else {})})
        return _counted(out, teacher_outputs)
    exported = result if isinstance(result, torch.nn.Module) else model  # the float module that was saved or quantized
    record = measure(result, out_dir / f"model{runtime.suffix}", keep=spec.keep_artefact and spec.number >= 0,
                     params=count_params(exported), module=exported, after=steps)
    record.update(out)
    durations.update(record.pop("timings"))
    record = _counted(record, teacher_outputs)
    if artefacts is not None and record["artefact"] is not None:
        m = record["metrics"]
        artefacts.put(whole_key, sorted(f for f in out_dir.glob("model*") if f.is_file()), {
            "trial": spec.number, "main": f"model{runtime.suffix}", "precision": m["precision"], "params": m["params"],
            "macs": m.get("macs"), "macs_int8": m.get("macs_int8"),
            "macs_by_op": (record.get("footprint") or {}).get("macs", {}).get("by_op"),
            "accuracy": m["accuracy"], "test_accuracy": m["test_accuracy"], "curve": list(curve),
            "seconds": round(time.perf_counter() - t_start, 3)})
    (out_dir / "record.json").write_text(json.dumps(record, indent=1))
    return record


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
    record.update(durations=durations, curve=curve, cache={
        "key": key, "hit": True, "kind": "artefact", "from_trial": meta.get("trial"), "saved_s": meta.get("seconds")})
    (out_dir / "record.json").write_text(json.dumps(record, indent=1))
    return record


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


class _ProbeMemo:
    """Figures of structures already probed in this run, by base, runtime and structural steps.

    Latency and size depend on the structure alone, so a later trial with the same pruning and
    quantization (parameters in a plugin's ``probe_ignores`` aside) reuses them instead of
    building and timing the same artefact again.
    """

    def __init__(self, run_dir: str, runtime: str, structural: list) -> None:
        shape = [[st.value, n, {k: v for k, v in cls.Config.model_validate(p).model_dump(mode="json").items()
                                if k not in cls.probe_ignores}] for st, n, p, cls in structural]
        key = content_key(_base_id(run_dir), runtime, shape)
        self.path = Path(run_dir) / "cache" / "probes" / f"{key}.json"

    def get(self) -> dict | None:
        try:
            probe = json.loads(self.path.read_text())
            return probe if {"metrics", "trial"} <= probe.keys() else None
        except (OSError, ValueError):  # missing or unreadable: probe again
            return None

    def put(self, probe: dict, trial: int) -> None:
        atomic_write(self.path, json.dumps({**probe, "trial": trial}))


def structure_verdict(metrics: dict, config: RunConfig) -> str | None:
    """Why a structure (measured before any training) cannot meet the budget, or ``None``."""
    budget = config.budget
    if budget.max_size_mb is not None and metrics["size_mb"] > budget.max_size_mb:
        return f"size {metrics['size_mb']:.3f} MB > budget {budget.max_size_mb} MB before fine-tuning"
    margin = 1 + config.search.latency_margin
    if budget.max_latency_ms is not None and metrics["latency_ms"] > budget.max_latency_ms * margin:
        return (f"latency {metrics['latency_ms']:.3f} ms > budget {budget.max_latency_ms} ms "
                f"(+{config.search.latency_margin:.0%} margin) before fine-tuning")
    ratio = metrics.get("latency_vs_base")
    if budget.max_latency_vs_base is not None and ratio is not None and ratio > budget.max_latency_vs_base * margin:
        return (f"latency {ratio:.3f}x the base > budget {budget.max_latency_vs_base}x "
                f"(+{config.search.latency_margin:.0%} margin) before fine-tuning")
    # counted from the structure: exact, no margin
    if budget.max_params is not None and metrics.get("params") is not None and metrics["params"] > budget.max_params:
        return f"params {metrics['params']:,} > budget {budget.max_params:,}"
    if budget.max_macs is not None and metrics.get("macs") is not None and metrics["macs"] > budget.max_macs:
        return f"MACs {metrics['macs']:,} > budget {budget.max_macs:,.0f}"
    # measured: the latency margin allows for their noise too
    for field, key, unit in (("max_memory_mb", "memory_mb", "MB memory"), ("max_energy_mj", "energy_mj", "mJ")):
        limit, value = getattr(budget, field), metrics.get(key)
        if limit is not None and value is not None and value > limit * margin:
            return (f"{value:.3f} {unit} > budget {limit} {unit} (+{config.search.latency_margin:.0%} margin) "
                    "before fine-tuning")
    return None


def _within_budget(metrics: dict, *, config: RunConfig, floor: float | None) -> bool:
    """Whether measured ``metrics`` meet the budget (the accuracy floor only where it is known)."""
    budget, drop = config.budget, config.budget.max_accuracy_drop
    if floor is None or drop is None:
        budget, base_accuracy = budget.model_copy(update={"max_accuracy_drop": None}), 0.0
    else:
        base_accuracy = floor + drop
    return all(v <= 0 for v in constraints({"metrics": metrics}, budget, base_accuracy).values())


def _base_id(run_dir: str) -> str:
    key_file = Path(run_dir) / "base" / "key.json"
    return json.loads(key_file.read_text()).get("key", "") if key_file.exists() else ""


def _save_and_measure(result: "torch.nn.Module | Artefact", final: Path, *, spec: TrialSpec, config: RunConfig,
                      runtime, data: DataBundle, device: torch.device, keep: bool, params: int,
                      module: torch.nn.Module | None = None,
                      accuracy_if: Callable[[dict], bool] | None = None,
                      test_if: Callable[[dict], bool] | None = None,
                      known: dict | None = None) -> dict[str, Any]:
    """Saves ``result`` for the runtime at ``final``, reloads it and measures latency, size and accuracy.

    Args:
        accuracy_if: Given the metrics without accuracy, whether to evaluate accuracy (a structure
            probe needs it only when the structure is stopped); ``None`` = always.
        test_if: Given the metrics with validation accuracy, whether to evaluate held-out test accuracy
            (only a trial within the budget can be on the front; the others record ``None``); ``None`` = always.
        known: Accuracy figures already known for these exact bytes (a reused artefact): not evaluated again.
        module: The float module that was saved or quantized (MACs are counted on it); ``None``
            for a reused artefact, whose counts come from ``known``.

    Besides latency, size and accuracy, the metrics get ``macs``, ``macs_int8``, ``memory_mb``,
    ``energy_mj`` and ``energy_source`` (:mod:`autocompress.measure.footprint`), and ``not_measured``
    (figure -> why) for those that are ``None``; ``record["footprint"]`` says how each was measured.
    Memory is measured (a fresh process, ~2 s) for the base, for trials within the budget and,
    when memory is an objective or has a budget, for every artefact.

    Raises:
        RuntimeError: A figure the run's objectives or budget need could not be measured.
    """
    threads = config.device.threads
    timings = {}
    t0 = time.perf_counter()
    final.parent.mkdir(parents=True, exist_ok=True)
    example = data.train.example(config.device.batch_size)
    if isinstance(result, torch.nn.Module):
        artefact = runtime.save(result, example, final)
        if keep:
            # the float module itself (code-free), so `autocompress export` can write other formats exactly
            try:
                save_module(result, final.parent / MODULE_STEM, example, kwargs=config.model.kwargs,
                            training_hooks=False)
            except NotRebuildable:  # a module that does not rebuild from weights + structure only limits the formats
                for f in module_files(final.parent / MODULE_STEM):
                    f.unlink(missing_ok=True)
    else:
        if result.runtime != runtime.name:
            raise RuntimeError(f"quantizer produced a {result.runtime} artefact, target runtime is {runtime.name}")
        if Path(result.path) == final:  # already in place (a reused artefact)
            artefact = result
        else:
            shutil.move(str(result.path), final)
            extras = []
            for extra in result.extra_files:  # e.g. an OpenVINO IR's .bin beside its .xml
                dest = final.with_suffix(Path(extra).suffix)
                shutil.move(str(extra), dest)
                extras.append(dest)
            artefact = Artefact(final, result.runtime, result.precision, extra_files=extras)
    timings["export"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    predict = runtime.load(artefact, threads=threads, device=device.type)
    predictors = {"trial": predict}
    base_path = Path(spec.run_dir) / "base" / f"model{runtime.suffix}"
    if spec.number >= 0 and base_path.exists():
        predictors[BASE] = _base_predictor(str(base_path), runtime.name, threads, device.type, base_path.stat().st_mtime)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    meter, no_energy = energy_meter(device.type) if not config.device.agents else (None, AGENT_NO_ENERGY)
    tracker = EnergyTracker(meter, config.device.warmup) if meter is not None else None
    latency_source: str | dict = "local"
    if config.device.agents:  # timed on the target device (no node slot needed); the other figures stay local
        lat, latency_source = _agent_latency(artefact, base_path if BASE in predictors else None, runtime=runtime,
                                             config=config, example=data.test.example(config.device.batch_size))
    else:
        with measurement_lock():
            lat = measure_latency(tracker.wrap(predictors) if tracker else predictors,
                                  data.test.example(config.device.batch_size), warmup=config.device.warmup,
                                  repeats=config.device.repeats, rounds=config.device.rounds, threads=threads, sync=sync)
    energy = tracker.finish() if tracker else {}
    size = artefact.size_bytes()
    metrics = {"latency_ms": lat["trial"].median_ms, "size_bytes": size, "size_mb": round(size / 1e6, 6),
               "params": params, "precision": artefact.precision, "runtime": artefact.runtime}
    if BASE in lat:
        metrics["latency_vs_base"] = round(lat["trial"].median_ms / lat[BASE].median_ms, 4)
    required = required_metrics(config)
    figures = measure_footprint(
        artefact, module=module, example=data.train.example(config.device.batch_size), known=known,
        energy=energy.get("trial"), energy_source=meter.source if meter else None, no_energy=no_energy,
        base_energy=energy.get(BASE), threads=threads, device=device.type)
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
    record = {
        "metrics": metrics,
        "latency": lat["trial"].to_dict(),
        "timings": timings,
        "artefact": str(final.relative_to(spec.run_dir)) if keep or spec.number < 0 else None,
        "device": _device_name(device),
        "latency_source": latency_source,
        "footprint": figures.detail,
    }
    if keep or spec.number < 0:  # checked before any later use of the files (load, export, resume)
        record["files"] = file_hashes([*artefact.files, *module_files(final.parent / MODULE_STEM)], spec.run_dir)
    if BASE in lat:
        record["base_latency_same_window"] = lat[BASE].to_dict()
        record["latency_vs_base"] = metrics["latency_vs_base"]
    if not (keep or spec.number < 0):
        for f in artefact.files:
            f.unlink(missing_ok=True)
    return record


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
