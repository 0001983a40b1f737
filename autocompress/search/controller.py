"""The search controller: an Optuna multi-objective study driven by ask/tell.

It measures the base model first, checks that the budget can be met at all, then asks
Optuna for configurations, hands plain trial specs to an executor, and tells Optuna the
measured objectives with the budget as constraints. After every finished trial it appends
``trials.jsonl`` and rewrites ``pareto.json`` atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from autocompress.config import RunConfig, dump_config
from autocompress.device import describe
from autocompress.errors import UserError
from autocompress.execution import Executor, make_executor
from autocompress.objectives import (
    DEFAULT_OBJECTIVES,
    caps_figures,
    constraints,
    directions,
    fixed_verdict,
    front,
    is_feasible,
    latency_ratio,
    metric_keys,
    objective_values,
    probe_problem,
    refusal,
    stopped_constraints,
    structure_verdict,
    vs_base,
)
from autocompress.plugin import NONE, STAGE_ORDER, Registry, Stage, discover, strongest_value
from autocompress.search.space import SearchSpace, _warm_params, load_search_space
from autocompress.search.throughput import throughput
from autocompress.store import RunFolder, atomic_write
from autocompress.trial import TrialRecord, TrialSpec, log_to, prepare_base, read_trials, resolve_devices, trial_dir

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STOP_GRACE_S = 30.0
"""Seconds past the time limit that running trials get to stop on their own (a fine-tune stops at the
deadline in its spec, saved, to continue on ``--resume``) before the controller cancels them (Ray)."""


@dataclass
class Progress:
    """What the terminal shows while searching."""

    total: int
    done: int = 0
    failed: int = 0
    stopped: int = 0
    running: int = 0
    front: int = 0
    started: float = field(default_factory=time.time)
    timeout: float | None = None
    last: str = ""


def default_run_dir(config: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = config.data.source if config.data.source == "digits" else (config.data.name or Path(config.data.path).name)
    return Path("results") / f"{stamp}-{config.model.name}-{data}".replace("/", "_")


def make_sampler(config: RunConfig) -> optuna.samplers.BaseSampler:
    s = config.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, min(50, s.trials // 4)))
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=max(4, min(10, s.trials // 4)))


class Search:
    """One run of the search.

    Args:
        config: The resolved run config.
        run_dir: The run folder (created if needed).
        executor: Runs the trials; default in-process.
        on_event: Called with ``(kind, payload)`` for progress display (``"log"``, ``"trial"``, ``"progress"``).
    """

    def __init__(self, *, config: RunConfig, run_dir: Path | str, executor: Executor | None = None,
                 on_event: Callable[[str, Any], None] | None = None) -> None:
        self.config = config
        self.run = RunFolder(run_dir)
        self.executor = executor or make_executor(config, run_dir)
        self.on_event = on_event or (lambda kind, payload: None)
        self.registry: Registry | None = None
        self.space: SearchSpace | None = None
        self.base: TrialRecord | None = None
        self.records: dict[int, TrialRecord] = {}
        self.objectives = metric_keys(config.objectives)  # metric keys, in the order Optuna is told them
        self.agent_machines: dict[str, dict] = {}  # device.agent: each agent's machine, from /info
        self.progress = Progress(total=config.search.trials, timeout=config.search.timeout)
        self._stop = False
        self._promoted: set[int] = set()  # trials promoted a rung up (finished, running or waiting)
        self._sweeps: list[tuple[dict, dict]] = []  # search.sweep variants to enqueue: (params, user attrs)
        self._swept: set[str] = set()  # every variant queued by this process (its params as JSON)
        self._unreachable: set[int] = set()  # trials not promoted as out of reach (logged once)
        self._firsts: list[dict] = []  # first structures not yet enqueued (params), least compressing first
        self._probed_over: set[str] = set()  # structures (_shape) the first-structure probes found over a fixed budget
        self._latency_scale_ms: float | None = None  # what Optuna's latency ratios are multiplied by (_told)
        self.normalisation_note = ""
        self.val_images: int | None = None  # the validation split's size (data.json), once prepared

    def log(self, line: str) -> None:
        self.run.log(f"{dt.datetime.now():%H:%M:%S} {line}")
        self.on_event("log", line)

    def validate(self) -> None:
        """Loads plugins and the search space; every user error surfaces here, before any work."""
        self.registry = discover(self.config.plugins_dir)
        import timm

        if not timm.is_model(self.config.model.name):
            import difflib

            hint = difflib.get_close_matches(self.config.model.name, timm.list_models(), n=3)
            raise UserError(f"model.name: unknown timm model {self.config.model.name!r}"
                            + (f"; did you mean {', '.join(hint)}?" if hint else "; see timm.list_models()"))
        self.space = load_search_space(self.config.search_space, self.registry, self.config.device.runtimes,
                                       rungs=self.config.search.rungs, pretrained=self.config.model.starts_trained,
                                       count_stages=self._count_stages)
        if self.config.model.checkpoint is not None and not Path(self.config.model.checkpoint).is_file():
            raise UserError(f"model.checkpoint: file not found: {self.config.model.checkpoint}")
        self._check_energy()
        self._check_train_device()
        if self.config.device.agents:  # every agent answers, with the token, before any work
            from autocompress.device import check_agents

            d = self.config.device
            self.agent_machines = check_agents(d.agents, d.agent_token_file, d.runtimes, timeout=d.agent_timeout)
        from autocompress.data import load_data, normalisation

        mean, std, source = normalisation(self.config.model, self.config.data)
        if mean is not None:  # fixed in config.yaml, so trials, a resume and `load` all use it
            self.config.data.mean, self.config.data.std = mean, std
        self.normalisation_note = f"normalisation: {source}" + (f": mean {list(mean)}, std {list(std)}" if mean else "")
        data = load_data(self.config.data, self.config.model.img_size)
        if self.config.model.checkpoint is not None:  # one that does not fit stops here, before the run folder is made
            from autocompress.models import create_model

            create_model(self.config.model.model_copy(update={"pretrained": False}),
                         self.config.model.num_classes or data.num_classes)

    def _count_stages(self) -> int:
        """The model's stage count (timm ``feature_info``), for a per-stage range in the space."""
        import timm

        from autocompress.models import model_stages

        model = self.config.model
        net = timm.create_model(model.name, pretrained=False, num_classes=model.num_classes or 10, **model.kwargs)
        count = len(model_stages(net))
        if not count:
            raise UserError(f"search_space: size 'stages' needs a model with stages (timm feature_info); "
                            f"{model.name} has none")
        return count

    def _check_energy(self) -> None:
        """A budget or objective on energy where this machine has no counter is refused before any work.

        Checked on the machine that runs the trials: this one, or a local Ray (a remote cluster's
        trials that cannot measure it fail with the reason instead).
        """
        search = self.config.search
        if search.executor == "ray" and search.ray_address not in (None, "local"):
            return
        field_name = ("budget.max_energy_mj" if self.config.budget.max_energy_mj is not None
                      else "objectives" if "energy_mj" in self.objectives else None)
        if field_name is None:
            return
        from autocompress.measure import energy_unavailable

        if getattr(self.config.device, "agents", None):  # latency is timed elsewhere: no counter here sees it
            from autocompress.trial import AGENT_NO_ENERGY

            raise UserError(f"{field_name}: energy cannot be measured: {AGENT_NO_ENERGY}")
        why = energy_unavailable(self.config.device.type)
        if why:
            raise UserError(f"{field_name}: energy cannot be measured on this machine ({why})")

    def _check_train_device(self) -> None:
        """``train.device: cuda`` where the trials cannot see a GPU is refused before any work.

        In-process, the trials see what this process sees; on Ray, a trial sees a GPU only when it
        reserves one (``search.gpus_per_trial``); a cluster's nodes are judged by its trials.
        """
        if self.config.train.device != "cuda":
            return
        search = self.config.search
        if search.executor == "ray":
            if search.gpus_per_trial <= 0:
                raise UserError("train.device: cuda needs search.gpus_per_trial above 0 on Ray (a trial that "
                                "reserves no GPU sees none); set it, or use train.device auto or cpu")
            return
        import torch

        if not torch.cuda.is_available():
            raise UserError("train.device: cuda, but this machine sees no CUDA device (torch.cuda.is_available() "
                            "is false); use train.device auto or cpu")

    def _train_note(self) -> dict[str, Any]:
        """``machine.json``'s ``train``: the setting, and the device it picks for trials run in this process."""
        note: dict[str, Any] = {"device": self.config.train.device}
        if self.config.search.executor == "ray":
            note.update(resolved="on each Ray worker: see each trial's train_device",
                        gpus_per_trial=self.config.search.gpus_per_trial)
            return note
        import torch

        try:
            train, _ = resolve_devices(self.config)
        except RuntimeError as err:  # the base's measurement fails with the same reason
            return {**note, "resolved": None, "problem": str(err)}
        note["resolved"] = train.type
        if train.type == "cuda":
            note["gpu"] = torch.cuda.get_device_name(train)
        return note

    def _check_kept_objectives(self) -> None:
        """A run resumed with other objectives than it started with is one line, before any work."""
        import yaml

        path = self.run.path / "config.yaml"
        if not path.is_file():
            return
        try:
            saved = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            return
        before = list(saved.get("objectives") or DEFAULT_OBJECTIVES)  # runs from before objectives were chosen
        if metric_keys(before) != self.objectives:
            raise UserError(f"objectives: {self.run.path} was searched for {', '.join(before)}; a resumed run keeps "
                            f"its objectives (start a new run for {', '.join(self.config.objectives)})")

    def _stop_inputs(self) -> dict:
        """The accuracy floor, the finished trials' curves and the front, for early stopping inside a trial."""
        drop = self.config.budget.max_accuracy_drop
        floor = None if drop is None or self.base is None else self.base.metrics.accuracy - drop
        history = [r.curve for r in self.records.values()
                   if r.state in ("complete", "pruned") and r.curve
                   and (not r.stopped or r.stopped.after_training)  # whole curves only
                   and not (r.cache and r.cache.hit)]  # a reused fine-tune repeats its curve
        feasible = [r for r in self.records.values() if r.state == "complete" and r.feasible]
        return {"floor": floor, "history": history,
                "front": [[*objective_values(r, self.objectives), r.latency_vs_base]
                          for r in front(feasible, self.objectives)]}

    def _spec(self, number: int, choices: dict, **kw) -> TrialSpec:
        return TrialSpec(number=number, choices={k: list(v) for k, v in choices.items()}, run_dir=str(self.run.path),
                         config=self.config.model_dump(mode="json"), plugin_files=self.registry.files(), **kw)

    def prepare(self) -> TrialRecord:
        """Creates the run folder, the base model and its measured record; checks the budget."""
        self.run.path.mkdir(parents=True, exist_ok=True)
        for note in getattr(self.space, "notes", None) or []:  # e.g. plugins left out for device.runtime
            self.log(note)
        if self.config.search.study_name is None:  # fixed now, so a renamed run folder still resumes its study
            self.config.search.study_name = self.run.path.name
        atomic_write(self.run / "config.yaml", dump_config(self.config))
        machine = describe(self.config.device.threads)
        from autocompress.measure import energy_meter

        meter, no_energy = energy_meter(self.config.device.type)  # what this machine can say about energy
        machine["energy"] = {"source": meter.source if meter else None, "not_available": no_energy}
        if self.config.device.agents:  # where latency is measured; this machine still trains and evaluates
            machine["agents"] = self.agent_machines
        machine["train"] = self._train_note()  # where trials fine-tune; they are measured on device.type
        self.run.write_json("machine.json", machine)
        if self.normalisation_note:
            self.log(self.normalisation_note)
        prepare_base(self.config, self.run.path, log=self.log)
        from autocompress.data import load_data

        summary = load_data(self.config.data, self.config.model.img_size).summary()
        self.val_images = summary["val"]
        self.run.write_json("data.json", summary)
        by_runtime = {}
        for runtime in self.config.device.runtimes:  # one base artefact per target runtime
            choices = {s.value: (NONE, {}) for s in STAGE_ORDER}
            if len(self.config.device.runtimes) > 1:
                choices["runtime"] = (runtime, {})
            record = self.executor.run(self._spec(-1, choices))
            if record.state != "complete":
                if record.agent_error:
                    raise UserError(f"device.agent: the base model could not be measured: {record.reason}")
                raise RuntimeError(f"the base model could not be measured on {runtime}: {record.reason}")
            by_runtime[runtime] = record
            m = record.metrics
            self.log(f"base: val top-1 {m.accuracy:.2f}%  latency {m.latency_ms:.3f} ms  "
                     f"size {m.size_mb:.2f} MB  {m.macs or 0:,} MACs  "
                     + (f"memory {m.memory_mb:.1f} MB  " if m.memory_mb is not None else "")
                     + (f"energy {m.energy_mj:.3f} mJ ({m.energy_source})  " if m.energy_mj is not None
                        else "energy n/a  ") + f"({runtime})")
        # the reference is the base on its fastest target runtime, never a slower one
        together = self._time_bases_together(list(by_runtime)) if len(by_runtime) > 1 else {}
        fastest = min(together, key=together.get) if together else \
            min(by_runtime, key=lambda rt: by_runtime[rt].metrics.latency_ms)
        base = by_runtime[fastest].model_copy(deep=True)
        if len(by_runtime) > 1:
            base.by_runtime = {rt: r.metrics for rt, r in by_runtime.items()}
            self.log(f"base reference: {base.metrics.runtime} (the fastest of {', '.join(by_runtime)}"
                     + (", timed together in interleaved rounds: " + ", ".join(f"{rt} {ms:.3f} ms" for rt, ms in
                                                                               together.items()) if together else "")
                     + ")")
        self.base = base
        m = base.metrics
        if m.test_accuracy is not None and m.accuracy - m.test_accuracy > 2.0:
            self.log(f"warning: the base reads {m.accuracy:.2f}% on validation but {m.test_accuracy:.2f}% on test: "
                     "was it trained on the validation images? The accuracy floor is set on validation; consider "
                     "data.val_from: test")
        self.run.write_json("base.json", base)
        self._check_budget()
        return base

    def _time_bases_together(self, runtimes: list[str]) -> dict[str, float]:
        """The base's artefacts on ``runtimes`` timed in one run of interleaved rounds: ``{runtime: median ms}``.

        Each base is first measured in its own window; on a machine whose speed drifts those windows
        disagree (on the night benchmark's 2-core VM ONNX Runtime read 1.89 ms and OpenVINO 1.66 ms seconds
        apart, where together they read 0.87 and 1.39 ms), and the reference, against which every
        trial's ``max_latency_vs_base`` is judged, went to the slower runtime. Empty where latency is
        measured on agents (their own machines) or a base artefact is missing.
        """
        import torch

        from autocompress.measure import get_runtime, measure_latency
        from autocompress.plugin import Artefact

        d = self.config.device
        if d.agents:
            return {}
        predictors = {}
        for name in runtimes:
            runtime = get_runtime(name)
            path = self.run.path / "base" / f"model{runtime.suffix}"
            if not path.is_file():
                return {}
            predictors[name] = runtime.load(Artefact(path, name), threads=d.threads, device=d.type)
        example = torch.randn(d.batch_size, 3, self.config.model.img_size, self.config.model.img_size,
                              generator=torch.Generator().manual_seed(0))
        # before any trial is submitted: nothing else measures on this node yet
        lat = measure_latency(predictors, example, warmup=d.warmup, repeats=d.repeats, rounds=max(2 * d.rounds, 10),
                              threads=d.threads, sync=torch.cuda.synchronize if d.type == "cuda" else None)
        return {name: lat[name].median_ms for name in runtimes}

    def _check_budget(self) -> None:
        """Refuses a budget that even the most compressed configuration cannot meet on any target runtime.

        Raises:
            UserError: One line naming the budget field and, per runtime, the figure that misses it.
        """
        budget = self.config.budget
        if not caps_figures(budget):
            return
        probes, problems, dropped = [], [], []
        for runtime in self.config.device.runtimes:
            probe, desc = self._probe_strongest(runtime)
            if probe.get("timed_out"):  # a step that hangs (seen: torch-pruning's graph on some models) holds no one up
                self.log(f"budget check on {runtime}: the most compressed configuration ({desc}) dropped from the "
                         f"check: {probe['reason']}")
                dropped.append(runtime)
                continue
            if probe["state"] != "complete":
                self.log(f"budget check on {runtime} skipped: the most compressed configuration failed ({probe['reason']})")
                return
            probes.append(probe)
            problem = probe_problem(budget, probe["metrics"], self.base["metrics"], desc=desc, runtime=runtime,
                                    threads=self.config.device.threads)
            if problem:
                problems.append(problem)
        if not probes:
            return
        self.run.write_json("probe.json", probes[0] if len(probes) == 1 else {"by_runtime": probes})
        message = refusal(problems, probed=len(probes), dropped=len(dropped))
        if message:
            raise UserError(message)

    def _probe_strongest(self, runtime: str) -> tuple[dict, str]:
        """Builds and measures, untrained, the most compressed configuration on ``runtime``.

        Returns:
            Its record (structure only, no artefact kept) and the configuration in words.
        """
        strongest = self.space.strongest(self.registry, runtime)
        probe = self._probe(strongest)
        desc = ", ".join(f"{s}={n}" for s, (n, _) in strongest.items() if n != NONE and s != "runtime") or "no compression"
        return probe, desc

    def _probe(self, choices: dict) -> TrialRecord:
        """Builds and measures a configuration's structure, untrained (trial -2; no artefact kept)."""
        probe = self.executor.run(self._spec(-2, choices, structure_only=True, keep_artefact=False))
        shutil.rmtree(trial_dir(self.run.path, -2), ignore_errors=True)
        return probe

    def _study(self) -> optuna.Study:
        storage = make_storage(self.config.search.storage, self.run.path)
        name = self.config.search.study_name or self.run.path.name
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # a new study
            existing = None
        if existing is not None and existing.metric_names and list(existing.metric_names) != list(self.objectives):
            raise UserError(f"objectives: the study {name!r} was searched for {', '.join(existing.metric_names)}; a "
                            f"resumed run keeps its objectives (start a new run for {', '.join(self.objectives)})")
        study = optuna.create_study(storage=storage, study_name=name, directions=list(directions(self.objectives)),
                                    sampler=make_sampler(self.config), load_if_exists=True)
        if not study.metric_names:
            study.set_metric_names(list(self.objectives))
        study.set_user_attr("run_dir", str(self.run.path.resolve()))
        if "latency_scale_ms" not in study.user_attrs and self.base is not None and self.base.metrics is not None:
            study.set_user_attr("latency_scale_ms", self.base.metrics.latency_ms)  # see _told; kept across resumes
        self._latency_scale_ms = study.user_attrs.get("latency_scale_ms")
        if study.trials:  # resumed: a seed of its own, or a seeded sampler would replay the first run's draws
            s = self.config.search
            study.sampler = make_sampler(self.config.model_copy(
                update={"search": s.model_copy(update={"seed": s.seed + len(study.trials)})}))
        self._requeue_stale(study)
        if self.config.search.warm_start and not study.trials:
            for params in self.space.warm_start:
                study.enqueue_trial(params, skip_if_exists=True)
        return study

    def _requeue_stale(self, study: optuna.Study) -> None:
        """Makes the study and ``trials.jsonl`` agree again after the last process stopped anywhere.

        A finished trial's record is stored in the study (user attr ``record``), then appended
        to ``trials.jsonl``, then told (see :meth:`_tell`), so after a SIGKILL at any point:
        finished in the study but missing from ``trials.jsonl`` -> its stored record is appended;
        RUNNING with a record in either place -> told with that record (it is not re-run);
        RUNNING without a record -> it was cut off: recorded failed, its params re-queued.
        No heartbeat is needed: the run-folder lock (:meth:`_lock`) guarantees that no other
        controller is driving the study, so every RUNNING trial here is stale.
        """
        text = self.run.trials_file.read_text() if self.run.trials_file.exists() else ""
        if text and not text.endswith("\n"):  # torn last line: drop it before anything is appended
            atomic_write(self.run.trials_file, "".join(json.dumps(r, default=str) + "\n" for r in self.run.trials()))
        records = {r["number"]: r for r in self.run.trials()}
        for t in study.get_trials(deepcopy=False):
            stored = t.user_attrs.get("record")
            if t.state.is_finished():
                if t.number not in records and stored is not None:
                    self.run.append_trial(stored)
                    self.log(f"trial {t.number}: record restored to trials.jsonl from the study")
                continue
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            record = records.get(t.number) or stored
            if record is None:
                choices = t.user_attrs.get("choices") or {}
                self._interrupt(study, _reopen(study, t), choices,
                                "interrupted: the search stopped while it ran; re-queued",
                                t.datetime_start.timestamp() if t.datetime_start else None)
                self.log(f"trial {t.number}: was running when the last process stopped; marked failed, re-queued")
                continue
            if t.number not in records:
                self.run.append_trial(record)
            trial = _reopen(study, t)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for key, value in (record.get("constraints") or {}).items():
                    trial.set_constraint(key, value)
            if record["state"] == "complete":
                study.tell(t.number, self._told(record))
            else:
                if record.get("interrupted"):
                    self._requeue(study, t.params, _carried(t.user_attrs))
                study.tell(t.number, state=_optuna_state(record))
            self.log(f"trial {t.number}: had finished when the last process stopped; recorded, not re-run")

    def _requeue(self, study: optuna.Study, params: dict, carried: dict | None = None) -> None:
        """Enqueues ``params`` unless the same re-queue is already waiting (safe to repeat).

        A re-queued trial carries its params in the user attr ``requeued``: a waiting trial's
        enqueued params are not public in Optuna; ``carried`` (its promotion and lineage) goes with it.
        """
        carried = carried or {}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            if t.user_attrs.get("requeued") == params and _carried(t.user_attrs) == carried:
                return
        study.enqueue_trial(params, user_attrs={"requeued": params, **carried})

    def _interrupt(self, study: optuna.Study, trial: optuna.Trial, choices: dict, reason: str,
                   started: float | None, record: TrialRecord | None = None) -> None:
        """Records a trial that was stopped (Ctrl-C, time limit, crash) as failed and re-queues its params.

        ``record``: the interrupted record the trial returned itself (a fine-tune that stopped at its
        deadline); else one is made here. Order: stored record, trials.jsonl, re-queue, tell; each step
        is repeatable on resume.
        """
        if record is None:
            record = TrialRecord.interrupted_trial(number=trial.number, choices=choices, reason=reason, started=started)
        trial.set_user_attr("record", record.to_json())
        self.records[trial.number] = record
        self.run.append_trial(record)
        self._requeue(study, trial.params, _carried(trial.user_attrs))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _abandon(self, study: optuna.Study, pending: dict, started: dict, reason: str) -> None:
        """Stops every running trial (Ray: force-cancelled) and records it via :meth:`_interrupt`."""
        self.executor.cancel_all()
        for number in list(pending):
            begun, choices = started.get(number, (None, {}))
            self._interrupt(study, pending.pop(number), choices, reason, begun)
        self.progress.running = 0

    def _lock(self):
        """Holds ``RUN/.lock`` while searching: a second controller on the same run stops at once.

        The kernel drops the lock when the process dies, SIGKILL included.
        """
        import fcntl

        self.run.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.run / ".lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise UserError(f"{self.run.path} is in use by another autocompress process; wait for it or stop it")
        return fh

    def _past_limit(self, grace: float = 0.0) -> bool:
        deadline = self._deadline()
        return deadline is not None and time.time() >= deadline + grace

    def _trains(self, pending: dict, begun: dict) -> bool:
        """Whether a running trial's configuration fine-tunes (it stops itself at the deadline, saved)."""
        for number in pending:
            choices = begun.get(number, (None, {}))[1]
            for stage in STAGE_ORDER:
                name, params = choices.get(stage.value, [NONE, {}])
                if name != NONE and self.registry.get(name).trains(params):
                    return True
        return False

    def _deadline(self) -> float | None:
        """When the search's time is up (epoch seconds): handed to each trial, whose fine-tune stops there."""
        timeout = self.config.search.timeout
        return None if timeout is None else self.progress.started + timeout

    # -- the fidelity ladder (search.rungs) -------------------------------------------------

    def _at_rung(self, choices: dict, index: int, promoted_from: int | None) -> tuple[dict, dict | None]:
        """``choices`` with the scheduled length set to rung ``index``, and the trial's rung (``None``
        when its configuration fine-tunes with no scheduled plugin, or the ladder is off)."""
        rungs = self.config.search.rungs
        for stage, plugins in (self.space.scheduled.items() if rungs else ()):
            name = choices.get(stage.value, (NONE, {}))[0]
            if name in plugins:
                index = min(index, len(rungs) - 1)
                choices = {k: (v[0], dict(v[1])) for k, v in choices.items()}
                choices[stage.value][1][plugins[name]] = rungs[index]
                return choices, {"index": index, "epochs": rungs[index], "rungs": list(rungs),
                                 "decay": self.config.search.decay, "stage": stage.value, "plugin": name,
                                 "promoted_from": promoted_from}
        return choices, None

    def _superseded(self) -> set[int]:
        """Trials whose promotion finished at least as accurate: the promoted record stands for them on the front."""
        out = set()
        for r in self.records.values():
            parent = self.records.get(r.rung.promoted_from) if r.rung and r.rung.promoted_from is not None else None
            if r.state == "complete" and parent is not None and parent.metrics and r.metrics \
                    and r.metrics.accuracy >= (parent.metrics.accuracy or 0.0):
                out.add(parent.number)
        return out

    def _promotable(self, *, nearest: bool = False) -> tuple[TrialRecord, int] | None:
        """The next trial to promote and the rung it goes to, or ``None``.

        The cheapest promotion first (the fewest epochs added: the lowest rung on a growing ladder);
        within a rung, the most accurate first. With ``nearest`` (before the run's first feasible model,
        :meth:`_enqueue_next`), the most accurate at any rung first: the one nearest the accuracy floor.
        A finished trial moves up when its structure meets the
        latency and size budget and its validation accuracy ranks in the top ``1/eta`` of the finished
        trials of its rung that are at least as compressed (no slower, beyond ``latency_margin``, and no
        larger): a heavily pruned trial, which starts lower, is compared only with trials that compress
        as much.

        Every rung's model is quantized, measured and can stand on the front, so the promotion that
        costs least adds to the front soonest; all promotions still come before a new trial. Highest
        rungs first (ASHA's order) spent 13 minutes of a night benchmark taking a feasible 40 % model
        from 4 to 8 epochs while a 50 % model waited for its 2-minute step to 2 epochs, the one that
        reached the hand pipeline's speed and size.
        """
        rungs, search = self.config.search.rungs, self.config.search
        if not rungs or len(rungs) < 2 or self.base is None:
            return None
        # a sweep variant shares its source's fine-tune: the source is promoted, and its promotion swept
        done = [r for r in self.records.values() if r.state == "complete" and r.rung is not None and r.metrics
                and r.metrics.accuracy is not None and r.stopped is None and r.swept_from is None]
        cost = {i: (rungs[i + 1] - rungs[i], i) for i in range(len(rungs) - 1)}
        order = sorted((r for r in done if r.rung.index in cost),
                       key=lambda r: (-r.metrics.accuracy, cost[r.rung.index]) if nearest
                       else (cost[r.rung.index], -r.metrics.accuracy))
        for c in order:
            k = c.rung.index
            if c.number in self._promoted or structure_verdict(
                    c.metrics.to_json(), self.config.budget, search.latency_margin) is not None:
                continue
            peers = [p for p in done if p.rung.index == k and _as_compressed(p, c, search.latency_margin)]
            ahead = sum(p.metrics.accuracy > c.metrics.accuracy for p in peers)
            if ahead < math.ceil(len(peers) / search.eta) and not self._out_of_reach(c, k):
                return c, k + 1
        return None

    def _out_of_reach(self, record: TrialRecord, index: int) -> bool:
        """Whether ``record``, at rung ``index``, stays under the accuracy floor at the top rung even after
        the largest rise any chain of promotions in this run made from that rung to the top, plus two
        standard deviations of the two whole-split readings' sampling noise. ``False`` until one chain
        reached the top (no evidence; the peer rule alone decides) or without an accuracy budget.

        A trial with no peer as compressed is otherwise always promoted; on the night benchmark two
        such 70 % trials, 4 pp under the floor at 3 epochs, spent 8 minutes reaching 9 epochs still
        under it, while the same structure pruned from a fine-tuned parent (lineage) was cheaper.
        """
        drop, top = self.config.budget.max_accuracy_drop, len(self.config.search.rungs) - 1
        if drop is None or self.base is None or not self.val_images:
            return False
        rises = []
        for r in self.records.values():
            if r.rung is None or r.rung.index != top or r.verdict_of is not None:
                continue
            node = r
            while node is not None and node.rung is not None and node.rung.index > index:
                node = self.records.get(node.rung.promoted_from) if node.rung.promoted_from is not None else None
            if node is not None and node.rung is not None and node.rung.index == index:
                high, low = self._fp32_top1(r), self._fp32_top1(node)
                if high is not None and low is not None:
                    rises.append(high - low)
        mine = self._fp32_top1(record)
        if not rises or mine is None:
            return False
        p = min(max(mine / 100.0, 0.01), 0.99)
        noise = 200.0 * math.sqrt(2 * p * (1 - p) / self.val_images)
        floor = self.base.metrics.accuracy - drop
        if mine + max(rises) + noise >= floor:
            return False
        if record.number not in self._unreachable:
            self._unreachable.add(record.number)
            self.log(f"not promoted: trial {record.number} ({mine:.2f}% at {self.config.search.rungs[index]:g} "
                     f"epochs) stays under the floor {floor:.2f}% even with the largest rise to the top rung seen "
                     f"in this run (+{max(rises):.2f} pp) and +{noise:.2f} pp of noise")
        return True

    def _fp32_top1(self, record: TrialRecord) -> float | None:
        """The whole-split top-1 of ``record``'s fine-tuned float model (that of the trial whose fine-tune
        it reused, for a cache hit), else its measured top-1."""
        if record.whole_val_after_training is not None:
            return record.whole_val_after_training
        source = self.records.get(record.cache.from_trial) if record.cache and record.cache.hit \
            and record.cache.from_trial is not None else None
        if source is not None and source.whole_val_after_training is not None:
            return source.whole_val_after_training
        return record.metrics.accuracy if record.metrics else None

    def _promote(self, study: optuna.Study, *, nearest: bool = False) -> bool:
        """Enqueues the next promotion (:meth:`_promotable`): the same parameters, one rung up; whether one was."""
        found = self._promotable(nearest=nearest)
        if found is None:
            return False
        record, rung = found
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == record.number), None)
        if frozen is None:
            return False
        self._promoted.add(record.number)
        study.enqueue_trial(dict(frozen.params), user_attrs={"promote": {"from": record.number, "rung": rung},
                                                             "lineage": _kept_lineage(record, frozen.user_attrs)})
        self.log(f"promoted trial {record.number} ({record.metrics.accuracy:.2f}% at "
                 f"{self.config.search.rungs[rung - 1]:g} epochs) to {self.config.search.rungs[rung]:g} epochs, "
                 "continuing its fine-tune" + (" (no feasible model yet: the one nearest the floor first)"
                                               if nearest else ""))
        return True

    # -- lineage (search.lineage) ----------------------------------------------------------

    def _parent(self, choices: dict) -> dict | None:
        """The finished trial whose fine-tuned model a new trial prunes further, or ``None``.

        A parent used the same pruning plugin (one with :attr:`~autocompress.plugin.Plugin.lineage`) with
        the same parameters but a lower value of its lineage field (the ratio), and its fine-tuned model
        is in the model cache. The closest one (the highest ratio) is taken; among those, the most accurate.
        """
        search = self.config.search
        name, params = choices.get(Stage.PRUNE.value, (NONE, {}))
        if not (search.lineage and search.cache) or name == NONE:
            return None
        cls = self.registry.get(name)
        knob, value = cls.lineage, cls.lineage_value(params)
        if value is None:
            return None
        best = None
        for r in self.records.values():
            if r.state != "complete" or r.stopped is not None or r.cache is None or r.cache.kind != "model" \
                    or not (r.cache.stored or r.cache.hit) or r.metrics is None or r.metrics.accuracy is None:
                continue
            their_name, theirs = r.choices.get(Stage.PRUNE.value, (NONE, {}))
            if their_name != name or {k: v for k, v in theirs.items() if k != knob} != \
                    {k: v for k, v in params.items() if k != knob}:
                continue
            ratio = cls.lineage_value(theirs)
            if ratio is None or not ratio < value:
                continue
            rank = (ratio, r.metrics.accuracy)
            if best is None or rank > best[0]:
                best = (rank, r)
        return None if best is None else {"parent": best[1].number, "key": best[1].cache.key}

    # -- every quantizer on a finished fine-tune (search.sweep) ----------------------------

    def _sweep(self, record: TrialRecord, lineage: dict | None, *, quiet: bool = False) -> int:
        """Queues ``record``'s fine-tuned model with every other quantizer option on every target
        runtime (:attr:`SearchConfig.sweep`); returns how many variants were queued.

        The fine-tune is the unit of cost and post-training quantization takes seconds, so a finished one
        is not left to the sampler to pair again with the same recipe. A variant keeps the trial's pruning
        and fine-tuning parameters, rung and lineage (so it reads the same model from the cache) and takes
        the quantizer's parameters at their most compressing values (:meth:`_probe_params`); its user
        attr ``sweep`` names the trial. A fine-tune is swept at the top rung within twice the allowed drop,
        and at a lower rung over the accuracy floor (it is feasible already; its variants need not wait
        minutes for the top rung). Variants of variants are not made (they trained nothing), nor promoted;
        nor one whose structure, quantizer and runtime an earlier artefact showed over the size, params or
        MACs budget (:meth:`_fixed_misses`; on the night benchmark each pruned structure's fp32 variants
        were re-measured at every rung). The study gets them one at a time, when nothing else waits
        (:meth:`_next_sweep`), so a search that stops leaves none behind half-asked.
        """
        search, budget = self.config.search, self.config.budget
        cache = record.cache
        if not (search.sweep and search.cache) or record.state != "complete" or record.stopped is not None \
                or cache is None or cache.kind != "model" or not cache.stored or record.metrics is None:
            return 0
        drop, accuracy = budget.max_accuracy_drop, record.metrics.accuracy
        if record.rung is not None and record.rung.index < len(search.rungs or ()) - 1:
            if drop is None or self.base is None or accuracy is None or accuracy < self.base.metrics.accuracy - drop:
                return 0  # a lower rung under the floor: its promotion, if any, is swept
        elif drop is not None and self.base is not None and accuracy is not None \
                and accuracy < self.base.metrics.accuracy - 2 * drop:
            return 0
        fixed = {stage.value: self._searched(record, stage) for stage in (Stage.PRUNE, Stage.DISTILL)}
        own = (record.choices.get(Stage.QUANTIZE.value, (NONE, {}))[0],
               record.choices.get("runtime", (None, {}))[0] if len(self.space.runtimes or []) > 1 else None)
        rung = record.rung.index if record.rung is not None else 0
        added, broken = 0, self._fixed_misses()
        for runtime in self.space.runtimes or [None]:
            for quantizer in self.space.options(Stage.QUANTIZE, runtime, pruned=True) or [NONE]:
                one_runtime = not runtime or len(self.space.runtimes) < 2
                if (quantizer, None if one_runtime else runtime) == own:
                    continue
                params = self._probe_params(quantizer) if quantizer != NONE else {}
                variant = {**record.choices, Stage.QUANTIZE.value: (quantizer, params)}
                if self._shape(variant, runtime or record.metrics.runtime) in broken:
                    continue  # this structure, quantizer and runtime already measured over the size/params/MACs budget
                item = {**fixed, "quantize": {quantizer: params} if params else quantizer,
                        **({} if one_runtime else {"runtime": runtime})}
                try:
                    values = _warm_params(0, item, self.space)
                except UserError:  # a pairing the space does not allow (e.g. a quantizer left out after pruning)
                    continue
                key = json.dumps([values, rung], sort_keys=True, default=str) if values is not None else None
                if key is None or key in self._swept:
                    continue
                self._swept.add(key)
                self._sweeps.append((values, {"sweep": {"from": record.number, "rung": rung}, "lineage": lineage}))
                added += 1
        if added and not quiet:
            self.log(f"sweep: trial {record.number}'s fine-tuned model queued with {added} other quantizer/runtime "
                     "choice(s), no training")
        return added

    def _shape(self, choices: dict, runtime: str) -> str | None:
        """A configuration's structure and runtime, as a trial's latency memo keys them: its structural
        plugins and their parameters less those that change only the weights (``probe_ignores``); size,
        params and MACs follow it. ``None`` when a plugin is unknown or its parameters invalid."""
        shape = []
        for stage in STAGE_ORDER:
            name, params = choices.get(stage.value, (NONE, {}))
            if name == NONE:
                continue
            try:
                cls = self.registry.get(name)
                if cls.changes_structure:
                    shape.append([stage.value, name, cls.structure_params(params)])
            except (UserError, ValueError):
                return None
        return json.dumps([shape, runtime], sort_keys=True, default=str)

    def _fixed_misses(self) -> set[str]:
        """The structures (:meth:`_shape`) whose artefact, trained or not, was measured over the size, params
        or MACs budget (a trial's, or a first-structure probe's): no fine-tune brings the same structure,
        quantizer and runtime under it."""
        broken = set(self._probed_over)
        for record in self.records.values():
            for figures in (record.metrics, record.probe):
                if figures is not None and fixed_verdict(figures.model_dump(), self.config.budget):
                    broken.add(self._shape(record.choices, figures.runtime))
        broken.discard(None)
        return broken

    def _searched(self, record: TrialRecord, stage: Stage) -> str | dict:
        """``record``'s plugin at ``stage`` with the values of its searched parameters (less the scheduled
        length), as a warm start names them; ``"none"`` when the stage was skipped."""
        name, params = record.choices.get(stage.value, (NONE, {}))
        if name == NONE:
            return NONE
        scheduled = self.space.scheduled.get(stage, {}).get(name)
        searched = self.space.stages[stage][name]
        return {name: {k: v for k, v in params.items() if k in searched and k != scheduled
                       and isinstance(searched[k], (list, dict))}}

    def _iterate(self, record: TrialRecord, *, quiet: bool = False) -> bool:
        """Iterative pruning (:attr:`SearchConfig.iterate`): queues, after ``record``'s sweep variants,
        the next value of its pruning ratio's grid with the rest of its configuration, at the first rung;
        at its ask the trial starts from the closest less pruned fine-tuned model (lineage), this one
        or a more accurate one at the same ratio. A fine-tune finished over the accuracy floor at any rung,
        its model kept, is followed by a step (once per configuration); returns whether one was queued.

        The chain 40 % -> 50 % -> 60 % is what a compression engineer does by hand; left to the
        sampler, the next ratio came when it was drawn (on the night benchmark, 9 minutes later). A
        structure over the floor at a lower rung is feasible already: its next ratio need not wait for
        the top rung's fine-tune (minutes); the step's own promotions go on from there.
        """
        search, drop = self.config.search, self.config.budget.max_accuracy_drop
        cache = record.cache
        if not (search.iterate and search.lineage and search.cache) or record.state != "complete" \
                or record.stopped is not None or record.swept_from is not None or cache is None \
                or cache.kind != "model" or not (cache.stored or cache.hit) or record.metrics is None \
                or record.metrics.accuracy is None or self.base is None:
            return False
        if drop is not None and record.metrics.accuracy < self.base.metrics.accuracy - drop:
            return False
        name, params = record.choices.get(Stage.PRUNE.value, (NONE, {}))
        knob = self._knob(name)
        if knob is None or knob[0] != self.registry.get(name).lineage or knob[3] is not None:
            return False
        param, grid = knob[0], knob[1]
        value = params.get(param)
        further = [g for g in grid if value is not None and g > value + 1e-9]
        if not further:
            return False
        prune = self._searched(record, Stage.PRUNE)
        prune[name][param] = further[0]
        item = {"prune": prune, "distill": self._searched(record, Stage.DISTILL),
                "quantize": self._searched(record, Stage.QUANTIZE)}
        if len(self.space.runtimes or []) > 1:
            item["runtime"] = record.choices.get("runtime", (None, {}))[0]
        try:
            values = _warm_params(0, item, self.space)
        except UserError:
            return False
        key = json.dumps(values, sort_keys=True, default=str) if values is not None else None
        if key is None or key in self._swept:
            return False
        self._swept.add(key)
        self._sweeps.append((values, {"iterate": {"from": record.number}}))
        if not quiet:
            self.log(f"iterate: trial {record.number} ({record.metrics.accuracy:.2f}%, {param} {value:g}) is pruned "
                     f"further to {param} {further[0]:g}, starting from its fine-tuned model")
        return True

    def _enqueue_next(self, study: optuna.Study) -> None:
        """Before each ask, when nothing waits, the first of: the next queued sweep variant or
        iterative-pruning step; while the run has no feasible model, the promotion of the trial nearest
        the accuracy floor (the most accurate, at any rung); the next first structure
        (:meth:`_first_structures`); the next promotion, cheapest first; else the sampler's draw.

        A variant takes seconds, a promotion a fine-tune. Until one model meets the whole budget the
        most promising fine-tune goes on first, as an engineer would take it: on three night benchmarks
        (seeds 2-4) the other first structures and their promotions (another quantizer's, or fp32's,
        more pruned) ran before the least compressing one's 4-epoch step, which gave the first feasible
        model, and cost 3-6 minutes. A promotion is decided here, at its ask, not queued ahead: decided
        earlier (seen: two behind a 9-epoch fine-tune) it missed what that fine-tune showed
        (:meth:`_out_of_reach`) and held up the step it led to."""
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return
        if self._next_sweep(study):
            return
        if not any(r.state == "complete" and r.feasible for r in self.records.values()) \
                and self._promote(study, nearest=True):
            return
        if not self._next_first(study):
            self._promote(study)

    def _next_first(self, study: optuna.Study) -> bool:
        """Enqueues the next first structure the study does not hold yet (as :meth:`_next_sweep` does its
        variants); whether one was."""
        while self._firsts:
            values = self._firsts.pop(0)
            if not _held(study, values, 0):
                study.enqueue_trial(values)
                return True
        return False

    def _next_sweep(self, study: optuna.Study) -> bool:
        """Enqueues the next queued sweep variant when no other trial waits; whether one was enqueued (a
        variant the study already holds, e.g. after a resume, is skipped)."""
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return False
        while self._sweeps:
            values, attrs = self._sweeps.pop(0)
            if not _held(study, values, _rung_index(attrs)):
                study.enqueue_trial(values, user_attrs=attrs)
                return True
        return False

    # -- start where the budget is ---------------------------------------------------------

    def _first_structures(self, study: optuna.Study, most: int = 3) -> None:
        """Without warm starts: probes each pruning plugin's ratio (untrained, seconds each, binary
        search over its grid) on each target runtime and quantizer, and queues the least compressing
        structures that meet the latency and size budget, with a recovery fine-tune, the least
        compressing first. The first is enqueued now; the others when :meth:`_enqueue_next` reaches
        them (kept in the study's user attr ``first_structures`` for a resume)."""
        budget, search = self.config.budget, self.config.search
        if not search.first_structures or self.space.warm_start or not caps_figures(budget) \
                or Stage.PRUNE not in self.space.stages:
            return
        distill = next((n for n in self.space.options(Stage.DISTILL) if n != NONE
                        and self.registry.get(n).fine_tunes), None)
        found = []
        for runtime in self.space.runtimes or [None]:
            for prune in self.space.options(Stage.PRUNE, runtime):
                knob = self._knob(prune)
                if knob is None:
                    continue
                param, grid, fixed, size = knob
                for quantizer in self.space.options(Stage.QUANTIZE, runtime):
                    value = self._least_meeting(runtime, prune, param, grid, fixed, quantizer, size)
                    if value is not None:
                        found.append((grid.index(value), runtime, prune, {**fixed, param: _at(value, size)},
                                      quantizer))
        queued: list[dict] = []
        scheduled = self.space.scheduled.get(Stage.DISTILL, {}).get(distill) if distill else None
        # the middle of each searched range: a random start-up draw at its edge (seen: the lowest learning
        # rate) would judge the structure by a poor recipe
        recipe = {k: _middle(v) for k, v in (self.space.stages[Stage.DISTILL][distill] if distill else {}).items()
                  if k != scheduled and isinstance(v, (list, dict))}
        for _, runtime, prune, params, quantizer in sorted(found, key=lambda f: f[0]):
            # the quantizer's structural parameters as probed, so the structure fine-tuned is the one that met
            # the budget (seen: a sampled ignore_first_last kept two layers in float, 0.5 % larger than the probe)
            structural = {k: v for k, v in self._probe_params(quantizer).items()
                          if k not in self.registry.get(quantizer).probe_ignores} if quantizer != NONE else {}
            item = {"prune": {prune: params}, "quantize": {quantizer: structural} if structural else quantizer,
                    **({"distill": {distill: recipe}} if distill else {}),
                    **({"runtime": runtime} if runtime and len(self.space.runtimes) > 1 else {})}
            try:
                values = _warm_params(0, item, self.space)
            except UserError as err:  # a combination the space does not allow
                self.log(f"first structures: {prune} {params} + {quantizer} not enqueued: {err}")
                continue
            if values is None or values in queued:
                continue
            queued.append(values)
            self.log(f"first structures: {prune} {params}" + (f" + {distill} {recipe}" if distill else "")
                     + f" + {quantizer}" + (f" on {runtime}" if runtime else "") + " (the least compressing that "
                     "meets the latency and size budget) is fine-tuned "
                     + ("first" if len(queued) == 1 else "once a model meets the budget, or none is promoted"))
            if len(queued) >= most:
                break
        if queued:
            study.set_user_attr("first_structures", queued)
            self._firsts = list(queued)
            self._next_first(study)

    def _knob(self, prune: str) -> tuple[str, list, dict, int | None] | None:
        """The pruning plugin's most compressing numeric parameter (``stronger: high``) and its grid
        in the space, the other searched parameters at their first values, and the parameter's list
        size (a per-stage range, probed with one value in every stage; it comes first, as it overrides
        a single ratio) or ``None``."""
        if prune == NONE:
            return None
        cls, space = self.registry.get(prune), self.space.stages[Stage.PRUNE][prune]
        ranked = sorted(space.items(), key=lambda kv: not (isinstance(kv[1], dict) and "size" in kv[1]))
        for param, spec in ranked:
            if cls.stronger.get(param) == "high" and isinstance(spec, dict) and "low" in spec:
                low, high, step = float(spec["low"]), float(spec["high"]), spec.get("step")
                count = int(round((high - low) / step)) + 1 if step else 6
                grid = [round(low + i * (step or (high - low) / 5), 10) for i in range(count)]
                fixed = {k: strongest_value(v, "any") for k, v in space.items()
                         if k != param and (isinstance(v, list) or isinstance(v, dict))}
                return param, grid, fixed, spec.get("size")
        return None

    def _least_meeting(self, runtime: str | None, prune: str, param: str, grid: list, fixed: dict,
                       quantizer: str, size: int | None = None) -> float | None:
        """The smallest value on ``grid`` whose untrained structure meets the latency and size budget
        (binary search: it assumes more pruning is no slower and no larger), or ``None``."""
        quant_params = self._probe_params(quantizer) if quantizer != NONE else {}
        base_ms = (self.base.by_runtime or {}).get(runtime, self.base.metrics).latency_ms if runtime \
            else self.base.metrics.latency_ms
        reference = self.base.metrics.latency_ms  # the budget's ratio is to the base on its fastest runtime

        def meets(value: float) -> bool:
            choices = {"prune": (prune, {**fixed, param: _at(value, size)}), "distill": (NONE, {}),
                       "quantize": (quantizer, quant_params)}
            if runtime and len(self.space.runtimes) > 1:
                choices["runtime"] = (runtime, {})
            probe = self._probe(choices)
            if probe.state != "complete":
                return False
            m = probe.metrics.to_json()
            # the ratio to the reference base timed beside it (the machine's speed drifts over a night:
            # seen 0.63 ms and 1.41 ms for the same base an hour apart); the start's figure only without one
            beside = m.get("latency_vs_base") is not None
            if not beside:
                m["latency_vs_base"] = m["latency_ms"] / reference
            verdict = structure_verdict(m, self.config.budget, 0.0)  # a first structure meets the budget
            if fixed_verdict(m, self.config.budget):
                self._probed_over.add(self._shape(choices, probe.metrics.runtime))
            ratio = latency_ratio(m)
            self.log(f"first structures: probe {prune} {param}={value:g} + {quantizer}"
                     + (f" on {runtime}" if runtime else "") + f": {m['latency_ms']:.3f} ms "
                     f"({m['latency_ms'] / base_ms:.2f}x the base's start figure on it, {ratio:.2f}x the reference"
                     + (" timed beside it" if beside else "") + f"), {m['size_mb']:.2f} MB: "
                     + ("meets the budget" if verdict is None else verdict))
            return verdict is None

        if not meets(grid[-1]):
            return None
        lo, hi = 0, len(grid) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if meets(grid[mid]):
                hi = mid
            else:
                lo = mid + 1
        return grid[lo]

    def _probe_params(self, quantizer: str) -> dict:
        """A quantizer's searched parameters at their most compressing values (its ``stronger``), as probed."""
        cls = self.registry.get(quantizer)
        return {k: strongest_value(v, cls.stronger.get(k, "any"))
                for k, v in self.space.stages[Stage.QUANTIZE][quantizer].items()}

    def stop(self) -> None:
        """Stops starting trials; the running ones finish (Ctrl-C, time budget)."""
        self._stop = True

    def _can_start(self, started: int, durations: list[float]) -> bool:
        if self._stop or started >= self.config.search.trials:
            return False
        timeout = self.config.search.timeout
        if timeout is None:
            return True
        elapsed = time.time() - self.progress.started
        estimate = statistics.median(durations) if durations else 0.0
        return elapsed + estimate <= timeout

    def search(self) -> dict:
        """Runs the search to its trial count or time budget; returns the final ``pareto.json``.

        At the time limit, a running fine-tune stops between two batches, saved, and its trial comes
        back ``interrupted`` (reason "stopped at the time limit; continues on --resume"); other trials
        still running are cancelled (Ray) at the limit, or :data:`STOP_GRACE_S` later while a
        fine-tuning trial runs, recorded failed ("cancelled at time limit"). Both are re-queued for ``--resume``, which continues a saved fine-tune where it
        stopped. Ctrl-C cancels and re-queues the running trials, then re-raises.
        """
        if self.registry is None:
            self.validate()
        self.progress.started = time.time()
        lock = self._lock()
        self.run.sweep_temporaries()
        pending: dict[int, optuna.Trial] = {}
        begun: dict[int, tuple[float, dict]] = {}
        study = None
        interrupted_flag = []

        def on_sigint(signum, frame):  # remembered too, in case code inside a trial swallows the exception
            interrupted_flag.append(signum)
            raise KeyboardInterrupt

        import signal
        import threading

        previous = signal.signal(signal.SIGINT, on_sigint) if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler) else None
        heartbeat = log_to(self.log)  # in-process steps still running say so in the log and the display
        heartbeat.__enter__()
        try:
            self._check_kept_objectives()
            self.prepare()
            study = self._study()
            self.records = {r.number: r for r in read_trials(self.run.path)}
            self._promoted = {r.rung.promoted_from for r in self.records.values()
                              if r.rung is not None and r.rung.promoted_from is not None}
            self._promoted |= {t.user_attrs["promote"]["from"] for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.WAITING,)) if t.user_attrs.get("promote")}
            if not study.trials:
                self._first_structures(study)
            else:
                self._firsts = _unstarted_firsts(study)
            attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
            for r in self.records.values():  # resumed: finished fine-tunes whose variants did not all run
                self._sweep(r, _kept_lineage(r, attrs.get(r.number, {})), quiet=True)
                self._iterate(r, quiet=True)
            interrupted = {n for n, r in self.records.items() if r.interrupted}
            finished = [t for t in study.trials if t.state.is_finished() and t.number not in interrupted]
            started = len(finished)
            self.progress.done = len(finished)
            self.progress.failed = sum(t.state == optuna.trial.TrialState.FAIL for t in finished)
            self.progress.stopped = sum(r.stopped is not None for r in self.records.values())
            durations = [r.duration_s for r in self.records.values() if r.state == "complete"]
            pareto = self._write_pareto()
            while True:
                while self.executor.running() < self.executor.slots and self._can_start(started, durations):
                    self._enqueue_next(study)
                    trial = study.ask()
                    promote = trial.user_attrs.get("promote") or {}
                    rung_index = _rung_index(trial.user_attrs)
                    choices, rung = self._at_rung(self.space.suggest(trial, self.registry), rung_index,
                                                  promote.get("from"))
                    lineage = trial.user_attrs["lineage"] if "lineage" in trial.user_attrs else self._parent(choices)
                    trial.set_user_attr("lineage", lineage)  # decided once: a promotion or re-queue keeps it
                    trial.set_user_attr("choices", {k: list(v) for k, v in choices.items()})
                    pending[trial.number] = trial
                    begun[trial.number] = (time.time(), {k: list(v) for k, v in choices.items()})
                    started += 1
                    self.progress.running = len(pending)
                    self.on_event("start", {"number": trial.number, "choices": choices})
                    self.executor.submit(self._spec(trial.number, choices, deadline=self._deadline(), rung=rung,
                                                    lineage=lineage, **self._stop_inputs()))
                if not pending:
                    break
                for record in self.executor.poll(timeout=1.0):
                    trial = pending.pop(record.number, None)
                    if trial is None:
                        continue
                    if record.interrupted:  # its fine-tune stopped at the deadline, saved
                        self.log(f"time limit: trial {record.number} stopped its fine-tune, saved; re-queued to "
                                 "continue on --resume")
                        self._interrupt(study, trial, record.choices, record.reason, record.started, record)
                        self.progress.running = len(pending)
                        continue
                    if trial.user_attrs.get("sweep"):
                        record.swept_from = trial.user_attrs["sweep"]["from"]
                    self._tell(study, trial, record)
                    if record.state == "complete":
                        durations.append(record.duration_s)
                        self._sweep(record, _kept_lineage(record, trial.user_attrs))
                        self._iterate(record)
                    pareto = self._write_pareto()
                    self.progress.running = len(pending)
                    self.on_event("trial", record)
                if interrupted_flag:
                    raise KeyboardInterrupt
                if pending and self._past_limit(grace=STOP_GRACE_S if self._trains(pending, begun) else 0.0):
                    self.log(f"time limit: {len(pending)} running trial(s) cancelled and re-queued for --resume")
                    self._abandon(study, pending, begun, "cancelled at time limit")
                    pareto = self._write_pareto()
        except KeyboardInterrupt:
            if study is not None and pending:
                self.log("interrupted: the running trials are recorded as failed and re-queued for --resume")
                self._abandon(study, pending, begun, "interrupted (Ctrl-C); re-queued")
                self._write_pareto()
            raise
        finally:
            heartbeat.__exit__(None, None, None)
            self.executor.shutdown()
            lock.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return pareto

    def _tell(self, study: optuna.Study, trial: optuna.Trial, record: TrialRecord) -> None:
        self.progress.done += 1
        self.progress.stopped += record.stopped is not None
        if record.state == "complete":
            cons = constraints(record.to_json(), self.config.budget, self.base.metrics.accuracy)
            record.constraints = {k: round(v, 6) for k, v in cons.items()}
            record.feasible = is_feasible(cons)
            for key, value in cons.items():
                trial.set_constraint(key, value)
            trial.set_user_attr("metrics", record.metrics.to_json())
            trial.set_user_attr("artefact", record.artefact)
        else:
            self.progress.failed += record.state == "fail"
            record.feasible = False
            trial.set_user_attr("reason", record.reason)
            if record.state == "pruned" and record.stopped:
                # a stopped trial is an infeasible point for the sampler: told without constraints,
                # TPE ranks PRUNED trials among the good ones while few feasible trials have finished,
                # and samples more like them (seen: a run that kept proposing trials halving stopped)
                cons = stopped_constraints(record.to_json(), self.config.budget, self.base.metrics.accuracy)
                record.constraints = {k: round(v, 6) for k, v in cons.items()}
                for key, value in cons.items():
                    trial.set_constraint(key, value)
        # stored in the study, appended to trials.jsonl, told last: a crash between any two
        # steps is reconciled on resume (_requeue_stale) without losing or re-running the trial
        trial.set_user_attr("record", record.to_json())
        self.records[record.number] = record
        self.run.append_trial(record)
        if record.state == "complete":
            study.tell(trial, self._told(record))
        else:
            study.tell(trial, state=_optuna_state(record))

    def _told(self, record: TrialRecord | dict) -> list[float]:
        """The objective values Optuna is told for a finished record: its measured figures, but latency as
        its ratio to the base timed beside it (:func:`~autocompress.objectives.latency_ratio`) times one
        fixed figure, the base's milliseconds when the study began (study user attr ``latency_scale_ms``;
        a resumed process re-times the base): the sampler ranks trials as the front does, not by
        milliseconds from windows that drift apart over a night (seen: the base at 1.07 ms at a night's
        start and 1.57 ms beside its last trial); still milliseconds, so a resumed older study compares."""
        values = objective_values(record, self.objectives)
        metrics = (record.get("metrics") or {}) if isinstance(record, dict) else record.metrics
        ratio = latency_ratio(metrics)
        if "latency_ms" in self.objectives and ratio is not None and self._latency_scale_ms:
            values[self.objectives.index("latency_ms")] = float(ratio) * self._latency_scale_ms
        return values

    def _write_pareto(self) -> dict:
        superseded = self._superseded()
        feasible = [r for r in self.records.values() if r.state == "complete" and r.feasible
                    and r.number not in superseded]
        best = front(feasible, self.objectives)
        on_front = {r.number for r in best}
        base = self.base.metrics.to_json() if self.base else None
        rows = []
        for r in best:
            m = r.metrics.to_json()
            rows.append({
                "number": r.number, "choices": r.choices, "metrics": m, "artefact": r.artefact,
                "latency": r.latency.to_json() if r.latency else None, "latency_vs_base": r.latency_vs_base,
                "vs_base": vs_base(m, base) if base else None, "footprint": r.footprint,
            })
        data = {
            "objectives": list(self.objectives), "directions": list(directions(self.objectives)),
            "budget": self.config.budget.model_dump(), "base": base,
            "trials_finished": sum(r.state == "complete" for r in self.records.values()),
            "trials_failed": sum(r.state == "fail" and not r.interrupted for r in self.records.values()),
            "trials_interrupted": sum(r.interrupted for r in self.records.values()),
            "throughput": throughput(list(self.records.values()), time.time() - self.progress.started,
                                     since=self.progress.started),
            "front": rows, "updated": dt.datetime.now().isoformat(timespec="seconds"),
        }
        self.run.write_json("pareto.json", data)
        self.progress.front = len(rows)
        for number, r in self.records.items():
            if number not in on_front and r.artefact:
                folder = trial_dir(self.run.path, number)
                for f in folder.glob("model*"):
                    f.unlink(missing_ok=True)
        return data


def _at(value: float, size: int | None) -> float | list[float]:
    """A knob's value, as a list of ``size`` equal values for a per-stage range."""
    return value if size is None else [value] * size


def _middle(spec: list | dict) -> Any:
    """The middle value of a searched parameter: a choice list's middle entry, a range's midpoint (geometric
    for a log range, on the step grid for a stepped one)."""
    if isinstance(spec, dict) and "choices" in spec:
        spec = list(spec["choices"])
    if isinstance(spec, list):
        return spec[(len(spec) - 1) // 2]
    low, high = spec["low"], spec["high"]
    if spec.get("step"):
        count = int(round((high - low) / spec["step"]))
        value = low + (count // 2) * spec["step"]
    else:
        value = math.sqrt(low * high) if spec.get("log") else (low + high) / 2
    return type(low)(round(value, 10)) if isinstance(low, int) else round(value, 10)


def _carried(user_attrs: dict) -> dict:
    """What a re-queued trial keeps of its user attrs: its promotion, lineage and sweep (the memo keys of a
    saved fine-tune depend on the first two; a sweep's rung names the fine-tune it reads)."""
    return {k: user_attrs[k] for k in ("promote", "lineage", "sweep") if k in user_attrs}


def _held(study: optuna.Study, values: dict, rung: int) -> bool:
    """Whether ``study`` already holds a trial with parameters ``values`` at rung ``rung`` of the ladder (a
    variant a resumed run had queued or run). Optuna's ``skip_if_exists`` compares parameters only, and a
    scheduled length is not one: the same variant one rung up would be skipped."""
    return any(_rung_index(trial.user_attrs) == rung and trial.system_attrs.get("fixed_params", trial.params) == values
               for trial in study.get_trials(deepcopy=False))


def _unstarted_firsts(study: optuna.Study) -> list[dict]:
    """The first structures (:meth:`Search._first_structures`) a resumed study has not yet held as trials."""
    return [v for v in study.user_attrs.get("first_structures", []) if not _held(study, v, 0)]


def _rung_index(user_attrs: dict) -> int:
    """The rung a trial runs at: its promotion's, its sweep's (the fine-tune it reads), else the first."""
    return (user_attrs.get("promote") or user_attrs.get("sweep") or {}).get("rung", 0)


def _kept_lineage(record: TrialRecord, user_attrs: dict) -> dict | None:
    """The lineage a trial that reads ``record``'s fine-tune carries (a promotion, a sweep variant): the
    parent its trial named where the pipeline used it, else ``None`` (its memo keys name no parent)."""
    return user_attrs.get("lineage") if record.lineage is not None and record.lineage.used else None


def _as_compressed(peer: TrialRecord, trial: TrialRecord, margin: float) -> bool:
    """Whether ``peer`` is at least as compressed as ``trial``: no larger, and no slower beyond ``margin``
    (latency as the ratio to the base timed beside each where both have one)."""
    if peer.latency_vs_base is not None and trial.latency_vs_base is not None:
        mine, theirs = trial.latency_vs_base, peer.latency_vs_base
    else:
        mine, theirs = trial.metrics.latency_ms, peer.metrics.latency_ms
    return peer.metrics.size_mb <= trial.metrics.size_mb and theirs <= mine * (1 + margin)


def _reopen(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A live handle on a trial that a stopped process left RUNNING, to store its record and constraints.

    Optuna has no public way to reopen one: ``Trial`` objects come from ``Study.ask``, the id the
    constructor needs is private (``FrozenTrial._trial_id``), and constraints can be set only
    through a live ``Trial``.
    """
    return optuna.trial.Trial(study, frozen._trial_id)


def _optuna_state(record: TrialRecord | dict) -> optuna.trial.TrialState:
    """A record that is not complete (typed, or as stored in the study): stopped early (PRUNED) or failed."""
    return optuna.trial.TrialState.PRUNED if record["state"] == "pruned" else optuna.trial.TrialState.FAIL


def make_storage(url: str | None, run_dir: Path) -> "str | optuna.storages.BaseStorage":
    """The study's storage: ``null`` = SQLite ``study.db`` in the run folder; ``journal://PATH``
    = an Optuna journal file (relative paths in the run folder; ``journal:///abs/path``);
    anything else is an Optuna storage URL (``sqlite:///...``, ``postgresql://...``)."""
    if url is None:
        return f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):]).expanduser()
        if not path.is_absolute():
            path = Path(run_dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return url


def load_resume(run_dir: Path | str) -> RunConfig:
    """The config of an existing run, for ``--resume``."""
    from autocompress.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--resume: {run_dir} is not a run folder (no config.yaml)")
    return load_config(run_dir / "config.yaml")
