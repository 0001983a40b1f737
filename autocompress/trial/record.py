"""The trial record: one typed, versioned model for what a trial produced.

Every record is built here (:meth:`TrialRecord.measured`, :meth:`TrialRecord.failed`,
:meth:`TrialRecord.interrupted`) and read back here (:meth:`TrialRecord.from_json`,
:func:`read_trials`), whether it travels through an executor, ``trials.jsonl``, ``base.json`` or an
Optuna user attr. The JSON keys are those records had before they were typed, plus ``version``.

A run folder may come from elsewhere: a record is parsed and validated, never unpickled. Records
without a ``version`` (written before it existed) are upgraded by :func:`upgrade`; a newer version
or a malformed record is one line naming the file and the field.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autocompress.errors import UserError

RECORD_VERSION = 1
"""The record layout written by this autocompress; :func:`upgrade` reads every older one."""

State = Literal["running", "complete", "pruned", "fail"]


class _Part(BaseModel):
    """A typed part of a record.

    Fields are read as attributes. Read-only key access (``part["x"]``, ``part.get("x")``,
    ``"x" in part``, ``dict(part)``) is kept for code written against the plain-dict records
    (plugins, older helpers); a field that is ``None`` counts as absent there, as a missing key did.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in type(self).model_fields else None
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def keys(self) -> list[str]:
        return [k for k in type(self).model_fields if getattr(self, k) is not None]

    def to_json(self) -> dict[str, Any]:
        """As a JSON-able dict (a record: one line of ``trials.jsonl``, ``base.json``, an Optuna user attr)."""
        return self.model_dump(mode="json")


class Metrics(_Part):
    """The figures of one measured artefact (a trial's, the base's or an untrained structure's).

    Attributes:
        accuracy: Validation top-1 %; ``None`` for an untrained structure that was not evaluated.
        test_accuracy: Held-out test top-1 %; ``None`` when not evaluated (over the budget).
        latency_ms: Median latency on the target runtime.
        size_bytes / size_mb: Size of the saved artefact.
        params: Parameters of the float module.
        precision: ``fp32``, ``int8``, ...
        runtime: The runtime it was saved for and timed on.
        latency_vs_base: Latency over the base's, timed in the same window.
        latency_vs_base_pooled: The median of ``latency_vs_base`` over every artefact of this structure the
            run has timed (this one, earlier trials', their probes'), which the latency budget is judged
            on: one window's ratio varies by ~10 % (seen: 0.44x, 0.47x and 0.52x for one structure).
        latency_pooled_from: How many measurements that median is of.
        latency_key: The structure's key (base, runtime, structural steps): artefacts with the same key
            run alike and weigh alike, so the front keeps the most accurate of them.
        macs / macs_int8 / memory_mb / energy_mj / energy_source: See :mod:`autocompress.measure.footprint`
            (runs from before these figures lack them).
        not_measured: Figure -> why it is ``None``.
    """

    accuracy: float | None = None
    test_accuracy: float | None = None
    latency_ms: float
    size_bytes: int
    size_mb: float
    params: int
    precision: str
    runtime: str
    latency_vs_base: float | None = None
    latency_vs_base_pooled: float | None = None
    latency_pooled_from: int | None = None
    latency_key: str | None = None
    macs: int | None = None
    macs_int8: int | None = None
    memory_mb: float | None = None
    energy_mj: float | None = None
    energy_source: str | None = None
    not_measured: dict[str, str] = Field(default_factory=dict)

    def figure(self, key: str) -> Any:
        """The value of metric ``key`` (``latency_ms``, ``macs``, ...); ``None`` when not measured.

        Raises:
            KeyError: ``key`` is not a figure of a record.
        """
        return self[key]


class LatencyStats(_Part):
    """Latency statistics of one predictor (:class:`autocompress.device.Latency` as recorded)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    round_medians_ms: list[float]
    cv: float
    calls: int


class Stopped(_Part):
    """Why and where a trial stopped early.

    Attributes:
        stage: ``structure`` (the untrained structure broke a budget; the record keeps state
            ``complete`` with the probe's figures) or the stage whose fine-tune was stopped.
        reason: The rule's explanation.
        plugin / step / accuracy / rule: The plugin, step and accuracy at the stop and the rule
            (``floor``, ``front``, ``halving``) of a fine-tune stop.
        after_training: The stop came after the last epoch (the curve is whole).
    """

    stage: str | None = None
    reason: str | None = None
    plugin: str | None = None
    step: int | None = None
    accuracy: float | None = None
    rule: str | None = None
    after_training: bool | None = None


class CacheUse(_Part):
    """Reuse of a fine-tuned model (``kind: model``) or of a whole artefact (``kind: artefact``)."""

    key: str
    hit: bool
    kind: str
    from_trial: int | None = None
    saved_s: float | None = None
    corrupt_rebuilt: bool | None = None
    stored: bool | None = None


class TeacherBatches(_Part):
    """Teacher outputs a trial read from the run's store (``reused``) and ran (``computed``)."""

    reused: int
    computed: int
    corrupt_rebuilt: int | bool = 0
    compute_s: float = 0.0


class ContinuedFrom(_Part):
    """The stopped fine-tune a trial continued: the trial stopped at the time limit, and the epoch and
    optimizer step it had reached."""

    trial: int | None = None
    epoch: int
    step: int


class RungUse(_Part):
    """A trial's rung of the fidelity ladder (``search.rungs``).

    Attributes:
        index / epochs: Which rung, and its length in epochs from the start of training.
        promoted_from: The trial at the rung below that this one continues (``None`` at the first rung).
        continued: Whether the fine-tune continued from that trial's saved state (``False``: it was not
            found, e.g. evicted from the cache, and the fine-tune ran from the start).
    """

    index: int
    epochs: float
    promoted_from: int | None = None
    continued: bool = False


class LineageUse(_Part):
    """The finished, less compressed trial whose fine-tuned model a trial pruned further (``search.lineage``).

    Attributes:
        parent: The parent trial's number.
        used: Whether the trial started from the parent's model (``False``: it pruned the base, see ``reason``).
        reason: Why the parent's model was not used (no longer in the cache; pruning it further does not give
            the structure that pruning the base gives).
    """

    parent: int
    used: bool = False
    reason: str | None = None


class TimedOut(_Part):
    """A step that ran past ``search.step_timeout``."""

    step: str
    limit_s: float | None = None


class TrialRecord(_Part):
    """What one trial (or the base model) produced; one line of ``trials.jsonl``.

    Attributes:
        version: :data:`RECORD_VERSION` of the layout.
        number: Optuna trial number (-1 = the base, -2 = the budget probe).
        choices: ``{stage: [plugin or "none", params]}`` (and ``runtime`` when searched).
        state: ``complete``, ``pruned`` (stopped during a fine-tune) or ``fail``.
        reason: Why it failed or stopped.
        host / started / finished / duration_s / structure_only: Where, when and how it ran.
        metrics: The measured figures (``None`` for a failed or pruned trial).
        latency / base_latency_same_window / latency_vs_base / latency_source / device: How latency
            was timed (``latency_source`` is ``local`` or the agent that timed it).
        base_runtime: The runtime of the base timed beside it: the run's reference (the base on its
            fastest target runtime), whatever runtime the trial was saved for.
        train_device: The device the trial's fine-tune ran on (``train.device``), e.g. ``cuda:NVIDIA H200``
            or ``cpu:x86_64``; ``None`` when nothing trained (and in runs from before it was recorded).
        footprint: How MACs, memory and energy were measured.
        durations: Seconds per stage and step.
        curve: ``[[step, accuracy], ...]`` of the fine-tune.
        whole_val_after_training: Top-1 on the whole validation split after the last epoch.
        artefact / files: The kept artefact (relative to the run folder) and SHA-256 of each kept file.
        probe / probe_from: Figures of the untrained structure, and the trial they were first measured for.
        stopped: An early stop.
        cache / artefact_cache / teacher_batches: Reuse of earlier work.
        timed_out / agent_error: A step over its time limit; an unreachable latency agent.
        node_id / worker_pid / measure_slot / measure_wait_s / attempts: Where an executor ran it.
        feasible / constraints: The controller's verdict on the budget.
        interrupted: Stopped by the search (Ctrl-C, time limit, crash) and re-queued.
        continued_from: A fine-tune stopped at the time limit that this trial continued.
        rung: The trial's rung of the fidelity ladder, and the trial it was promoted from.
        lineage: The less compressed trial whose fine-tuned model this one pruned further.
        swept_from: The trial whose fine-tuned model this one quantized with another quantizer or
            runtime, with no training (``search.sweep``).
        verdict_of: The trial that ran this trial's fine-tune to its end and was stopped then; this one
            was judged on that model's whole-split accuracy and stopped without training.
        proxy: Top-1 % of the untrained structure after BatchNorm recalibration (a cheap score probed
            before fine-tuning, :func:`autocompress.measure.recalibrated_top1`), where it was probed.
        by_runtime: The base's figures on each target runtime (``base.json`` only).
        plugin_log: Lines the trial's plugins logged.
    """

    version: int = RECORD_VERSION
    number: int
    choices: dict[str, list]
    state: State
    reason: str | None = None
    host: str | None = None
    started: float
    finished: float | None = None
    duration_s: float | None = None
    structure_only: bool = False
    metrics: Metrics | None = None
    latency: LatencyStats | None = None
    base_latency_same_window: LatencyStats | None = None
    base_runtime: str | None = None
    latency_vs_base: float | None = None
    latency_source: str | dict[str, Any] | None = None
    device: str | None = None
    train_device: str | None = None
    footprint: dict[str, Any] | None = None
    durations: dict[str, float] = Field(default_factory=dict)
    curve: list[list[int | float]] = Field(default_factory=list)
    whole_val_after_training: float | None = None
    artefact: str | None = None
    files: dict[str, str] | None = None
    probe: Metrics | None = None
    probe_from: int | None = None
    stopped: Stopped | None = None
    cache: CacheUse | None = None
    artefact_cache: dict[str, Any] | None = None
    teacher_batches: TeacherBatches | None = None
    timed_out: TimedOut | None = None
    agent_error: str | None = None
    node_id: str | None = None
    worker_pid: int | None = None
    measure_slot: str | None = None
    measure_wait_s: float | None = None
    attempts: int | None = None
    feasible: bool | None = None
    constraints: dict[str, float] | None = None
    interrupted: bool = False
    continued_from: ContinuedFrom | None = None
    rung: RungUse | None = None
    lineage: LineageUse | None = None
    swept_from: int | None = None
    verdict_of: int | None = None
    proxy: float | None = None
    by_runtime: dict[str, Metrics] | None = None
    plugin_log: list[str] = Field(default_factory=list)

    # -- building -------------------------------------------------------------------------

    @classmethod
    def _build(cls, *, started: float, finished: float | None = None, **fields: Any) -> "TrialRecord":
        """The one path every record is built through: stamps the version and the timing, validates."""
        finished = time.time() if finished is None else finished
        try:
            return cls.model_validate({**fields, "version": RECORD_VERSION, "started": started, "finished": finished,
                                       "duration_s": round(finished - started, 3)})
        except ValidationError as err:
            raise ValueError(f"trial {fields.get('number')}: record {_first_error(err)}") from None

    @classmethod
    def measured(cls, *, number: int, choices: dict, started: float, host: str | None, structure_only: bool,
                 parts: Mapping[str, Any]) -> "TrialRecord":
        """The record of a trial that ran to its end: ``complete``, or ``pruned`` when a fine-tune stopped.

        Args:
            parts: What the pipeline measured (``metrics``, ``latency``, ``durations``, ``curve``,
                ``stopped``, ...; ``state`` and ``reason`` when it stopped), keyed as the record's fields.

        Raises:
            ValueError: A part is not a field of the record or has the wrong type.
        """
        parts = dict(parts)
        state = parts.pop("state", "complete")
        return cls._build(number=number, choices=choices, state=state, host=host, started=started,
                          structure_only=structure_only, **parts)

    @classmethod
    def failed(cls, *, number: int, choices: dict, reason: str, started: float, host: str | None = None,
               structure_only: bool = False, finished: float | None = None, **details: Any) -> "TrialRecord":
        """The record of a trial that failed (``details``: ``timed_out``, ``agent_error``, ``attempts``, ...)."""
        return cls._build(number=number, choices=choices, state="fail", reason=reason, host=host, started=started,
                          structure_only=structure_only, finished=finished, **details)

    @classmethod
    def interrupted_trial(cls, *, number: int, choices: dict, reason: str, started: float | None) -> "TrialRecord":
        """A trial the search stopped (Ctrl-C, time limit, crash): failed, infeasible, to be re-queued."""
        now = time.time()
        return cls.failed(number=number, choices=choices, reason=reason, started=started or now, finished=now,
                          interrupted=True, feasible=False)

    def set_execution(self, *, node_id: str | None, worker_pid: int | None, measure_slot: str | None,
                      measure_wait_s: float | None, attempts: int | None) -> "TrialRecord":
        """Records where an executor ran the trial (the same fields in-process and on Ray); returns the record."""
        self.node_id, self.worker_pid, self.measure_slot = node_id, worker_pid, measure_slot
        self.measure_wait_s, self.attempts = measure_wait_s, attempts
        return self

    def judge(self, constraint_values: Mapping[str, float]) -> "TrialRecord":
        """Records the budget's constraint values; feasible when each is <= 0. Returns the record."""
        self.constraints = {k: round(v, 6) for k, v in constraint_values.items()}
        self.feasible = all(v <= 0 for v in constraint_values.values())
        return self

    # -- JSON -----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes, where: str) -> "TrialRecord":
        """Parses and validates a stored record (any version this autocompress knows).

        Args:
            data: The record as a JSON text or as the dict it decodes to.
            where: Names its place for errors (``RUN/trials.jsonl line 3``).

        Raises:
            UserError: Not JSON, not a record, a field of the wrong type, or a newer version.
        """
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as err:
                raise UserError(f"{where}: not a JSON record ({err})") from None
        if isinstance(data, TrialRecord):
            return data
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not a trial record (a JSON {type(data).__name__}, not an object)")
        try:
            # keys from an older layout that no field holds any more are dropped, never an error
            return cls.model_validate(upgrade(dict(data), where), extra="ignore")
        except ValidationError as err:
            raise UserError(f"{where}: malformed trial record: {_first_error(err)}") from None


def upgrade(data: dict[str, Any], where: str = "record") -> dict[str, Any]:
    """Brings a stored record's dict to :data:`RECORD_VERSION`.

    Version 0 (no ``version`` key, runs before records were typed) has the same keys as version 1:
    it gets the version stamped, and ``structure_only`` false where it is missing.

    Raises:
        UserError: ``version`` is not a whole number, or newer than this autocompress reads.
    """
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise UserError(f"{where}: field version: {version!r} is not a record version")
    if version > RECORD_VERSION:
        raise UserError(f"{where}: trial record version {version} was written by a newer autocompress "
                        f"(this one reads up to {RECORD_VERSION}); upgrade autocompress to open this run")
    if version == 0:
        data = {**data, "version": 1}
        data.setdefault("structure_only", False)
    return data


def read_trials(run_dir: Path | str) -> list[TrialRecord]:
    """Every trial recorded in ``RUN/trials.jsonl``, by number; the last line wins for a number
    recorded twice; a line cut short by a crash is skipped.

    Raises:
        UserError: A record is malformed or of a newer version (the line is named).
    """
    path = Path(run_dir) / "trials.jsonl"
    if not path.is_file():
        return []
    out: dict[int, TrialRecord] = {}
    for i, line in _lines(path):
        try:
            data = json.loads(line)
        except ValueError:  # torn by a crash mid-write
            continue
        record = TrialRecord.from_json(data, f"{path} line {i}")
        out[record.number] = record
    return [out[k] for k in sorted(out)]


def read_record(path: Path | str) -> TrialRecord:
    """One record stored as a JSON file (``RUN/base.json``).

    Raises:
        UserError: The file cannot be read or holds no valid record.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    return TrialRecord.from_json(text, str(path))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            yield i, line


def _first_error(err: ValidationError) -> str:
    """``field metrics.latency_ms: Input should be a valid number`` (and how many more)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(record)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field {loc}: {first['msg']}{more}"
