"""The plugin contract: one plugin = one file = one class.

A plugin names its ``stage``, owns a pydantic ``Config`` (``extra="forbid"``, every
field with a default), declares its default ``search_space`` ranges, and implements
``apply(model, ctx)``. Plugins of the quantize stage may return an :class:`Artefact`
(a file for one runtime) instead of a module; every other stage returns a module.
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from autocompress.data import DataBundle
from autocompress.measure import Artefact
from autocompress.plugin.teacher import TeacherOutputs

VAL_SLICE = 512  # fewest validation images fine-tunes report their per-epoch accuracy on


def curve_sample_size(max_accuracy_drop: float | None, val_images: int) -> int:
    """Validation images per-epoch accuracy is read on: enough that two binomial standard deviations
    (at the worst case, 50 %) stay within half the allowed drop, at least :data:`VAL_SLICE`, at most
    the whole split. A 1 pp budget needs 40,000 images, so it reads the whole split; 512 images are
    +-4.4 pp."""
    if max_accuracy_drop is None:
        return min(VAL_SLICE, val_images)
    if max_accuracy_drop <= 0:
        return val_images
    return min(val_images, max(VAL_SLICE, math.ceil((200.0 / max_accuracy_drop) ** 2)))


class Stage(str, enum.Enum):
    """Pipeline stages, applied in this order."""

    PRUNE = "prune"
    DISTILL = "distill"
    QUANTIZE = "quantize"


STAGE_ORDER: tuple[Stage, ...] = (Stage.PRUNE, Stage.DISTILL, Stage.QUANTIZE)
NONE = "none"


class PluginConfig(BaseModel):
    """Base of every plugin's ``Config``: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class TrialContext:
    """What a plugin may use besides the model.

    Attributes:
        data: Train/val/test splits (fine-tune on ``train``, calibrate on ``train``).
        teacher: The float base model in eval mode, for distillation. Do not modify.
        device: Torch device for training (``train.device``); the artefact is exported on the CPU
            and measured on the target device, whatever trained it.
        runtime: Name of the runtime the final artefact is saved for.
        example_input: A normalised batch of the measured batch size.
        workdir: A folder for this trial's files.
        seed: Seed for any randomness. The run's seed, the same for every trial: trials fine-tune
            and calibrate on the same batches, so they differ by their configuration, not by the
            luck of their batches, and the teacher's outputs on a batch can be reused.
        batch_size: Batch size for training and calibration.
        threads: Thread count of the target device.
        report: Callback ``report(step, accuracy, final=False, last=None)`` after each fine-tuning
            epoch (accuracy in % on a validation slice; ``final`` for the stage's last epoch;
            ``last``: the stage's last step, so the trial is compared with curves of the same
            schedule). It may raise :class:`autocompress.trial.early_stop.StopTrial` to end the trial
            early: let it propagate.
        log: Callback for one line about what the plugin did; in a trial the line goes to the
            trial's ``log.txt`` and its record's ``plugin_log``.
        structure_only: Only latency and size will be measured (a cheap probe): skip training.
        teacher_outputs: ``teacher`` with its outputs kept per batch for the run (``search.cache``
            when trials train on the CPU), or ``None``; plugins use it through :meth:`frozen_teacher`.
        deadline: When the search's time is up (epoch seconds), or ``None``: a fine-tune through
            :func:`autocompress.plugin.helpers.fit` stops there, saved, and raises
            :class:`autocompress.models.TimeUp` (let it propagate); the search continues it on ``--resume``.
        fit_checkpoint: ``fit_checkpoint()`` gives the next fine-tune's
            :class:`autocompress.models.FitCheckpoint` (where it is saved at the deadline and
            continued from), or is ``None``; :func:`autocompress.plugin.helpers.fit` calls it.
        rung: ``rung()`` gives the :class:`autocompress.models.Rung` the running step fine-tunes
            to (the search's fidelity ladder: its length, and the state it continues from), or is
            ``None``; set only for the step of a plugin whose :attr:`Plugin.fidelity` the
            scheduler owns. :func:`autocompress.plugin.helpers.fit` calls it.
        original: The base model, when ``model`` is not the base but a fine-tuned descendant that
            this plugin pruned less (the search's lineage, for a plugin with :attr:`Plugin.lineage`);
            ``None`` otherwise. Ratios refer to it: the result must have the structure that pruning
            ``original`` directly would give (the pipeline checks, and prunes the base on a mismatch).
    """

    data: DataBundle
    teacher: torch.nn.Module | None
    device: torch.device
    runtime: str
    example_input: torch.Tensor
    workdir: Path
    seed: int = 0
    batch_size: int = 64
    threads: int = 2
    report: Callable[..., None] = lambda step, acc, final=False, last=None, whole=None: None
    log: Callable[[str], None] = lambda line: None
    structure_only: bool = False
    teacher_outputs: TeacherOutputs | None = None
    curve_images: int = VAL_SLICE
    deadline: float | None = None
    fit_checkpoint: Callable[[], Any] | None = None
    rung: Callable[[], Any] | None = None
    original: torch.nn.Module | None = None

    def calibration_size(self, count: int, *, probe: int = 1) -> int:
        """How much to calibrate on: ``count``, or at most ``probe`` in a structure probe.

        A probe measures only latency and size, which do not depend on how well ranges were
        calibrated: a quantizer calibrates on ``ctx.calibration_size(cfg.calibration_batches)``
        batches (or images, with ``probe`` sized to match) and stays quick there.
        """
        return max(1, min(count, probe)) if self.structure_only else count

    def calibration_inputs(self, batches: int, *, probe: int = 1) -> list[torch.Tensor]:
        """Training inputs to calibrate on: :meth:`calibration_size` batches of ``batch_size``,
        shuffled with the run's seed (the same batches in every trial)."""
        count = self.calibration_size(batches, probe=probe)
        return [x for x, _ in self.data.train.batches(self.batch_size, shuffle=True, seed=self.seed,
                                                       limit=count * self.batch_size)]

    def frozen_teacher(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The teacher as a function of a training batch, for :func:`autocompress.plugin.teacher.kd_loss`.

        Its outputs come from the run's store when there is one (computed once per batch per
        run, see :class:`autocompress.plugin.teacher.TeacherOutputs`). Use ``teacher`` itself where the
        teacher must run, e.g. for forward hooks on its features.
        """
        if self.teacher is None:
            return None
        self.teacher.to(self.device).eval()
        return self.teacher_outputs if self.teacher_outputs is not None else self.teacher

    def epoch_reporter(self, epochs: float) -> Callable[[int, torch.nn.Module], float]:
        """An ``on_epoch`` callback for :func:`autocompress.models.fit` over ``epochs`` epochs: reports
        top-1 on the validation sample after each epoch through :attr:`report`, and returns it. After
        the last epoch it also reads the whole validation split (``whole=``): a finished fine-tune is
        judged on that, never on the sample."""
        last = max(1, math.ceil(epochs))

        def on_epoch(epoch: int, model: torch.nn.Module) -> float:
            accuracy = self.slice_top1(model)
            if epoch + 1 >= last:
                self.report(epoch + 1, accuracy, final=True, last=last, whole=self.whole_top1(model))
            else:
                self.report(epoch + 1, accuracy, final=False, last=last)
            return accuracy

        return on_epoch

    def slice_top1(self, model: torch.nn.Module) -> float:
        """Top-1 % on the validation sample curves are reported on (``curve_images``, stratified by class)."""
        from autocompress.measure import module_predictor, top1

        return top1(module_predictor(model, self.device), self.data.val.sample(self.curve_images, self.seed))

    def whole_top1(self, model: torch.nn.Module) -> float:
        """Top-1 % on the whole validation split (the figure the accuracy floor is set on)."""
        from autocompress.measure import module_predictor, top1

        return top1(module_predictor(model, self.device), self.data.val)


class Plugin(abc.ABC):
    """Base class of every method plugin.

    Subclasses set the class attributes and implement :meth:`apply`. They are
    constructed with a validated config: ``MyPlugin(config=MyPlugin.Config(ratio=0.5))``
    or ``MyPlugin.from_params({"ratio": 0.5})``.

    Attributes:
        name: Unique name used in search spaces and results.
        stage: The stage the plugin belongs to.
        Config: pydantic model of its parameters.
        search_space: Default search ranges, ``{param: {"low":..,"high":..} | {"choices":[..]} | value}``.
        runtimes: Runtimes whose artefacts it can produce; ``None`` = any (it returns a module).
        changes_structure: Whether latency and size depend on it (pruning, quantization)
            rather than only the weights' values (distillation).
        fine_tunes: Whether it can train (minutes, not seconds): such trials have their structure
            measured first and may be stopped early (it must skip training when
            ``ctx.structure_only`` and report per-epoch accuracy through ``ctx.report``). A plugin
            whose training depends on its parameters says which do in :meth:`trains`.
        probe_ignores: ``Config`` fields that change the weights but not the structure
            (calibration, a fine-tune's schedule): trials that differ only in them share one
            structure probe of latency and size.
        fidelity: The ``Config`` field that sets how long it fine-tunes (``"epochs"``), when the
            search's scheduler may own it (``search.rungs``): it is then not searched, set to the
            trial's rung, and the fine-tune must go through :func:`autocompress.plugin.helpers.fit`
            (once per ``apply``), which continues a promoted trial from its previous rung.
            ``None`` = the plugin's length is always a searched parameter.
        pretrained_search_space: Default ranges that replace those of :attr:`search_space` when
            the base model is already trained (a checkpoint or timm's pretrained weights), e.g.
            lower learning rates.
        lineage: The ``Config`` field whose higher values prune further (``"ratio"``), when the
            plugin can continue pruning a fine-tuned model it pruned less (``ctx.original`` is then
            the base): the search may start a more compressed trial from a finished, less
            compressed one with otherwise equal parameters (``search.lineage``). ``None`` = it
            always prunes the base.
        stronger: For each searchable ``Config`` field, which values compress more (smaller or
            faster), read by :meth:`strongest`: ``"high"`` (a larger value: a pruning ratio),
            ``"low"`` (a smaller value: a bit width), ``"any"`` (latency and size do not depend
            on it: a schedule, a calibration setting), or a list of values, most compressing
            first (``["int8", "float"]``; values it does not list rank last). The contract suite
            fails a plugin whose default ``search_space`` has a parameter missing here.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    search_space: ClassVar[dict[str, Any]] = {}
    runtimes: ClassVar[frozenset[str] | None] = None
    changes_structure: ClassVar[bool] = True
    fine_tunes: ClassVar[bool] = False
    probe_ignores: ClassVar[frozenset[str]] = frozenset()
    stronger: ClassVar[dict[str, Any]] = {}
    fidelity: ClassVar[str | None] = None
    pretrained_search_space: ClassVar[dict[str, Any]] = {}
    lineage: ClassVar[str | None] = None

    def __init__(self, *, config: PluginConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Plugin":
        """Builds the plugin from plain parameters, validated by its ``Config``."""
        return cls(config=cls.Config.model_validate(params))

    @classmethod
    def structure_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` validated by ``Config`` (defaults filled in, as JSON values) less
        :attr:`probe_ignores`: what of this step its artefact's latency and size depend on.

        Raises:
            pydantic.ValidationError: ``params`` do not fit ``Config``.
        """
        values = cls.Config.model_validate(params).model_dump(mode="json")
        return {k: v for k, v in values.items() if k not in cls.probe_ignores}

    @classmethod
    def trains(cls, params: dict[str, Any]) -> bool:
        """Whether this configuration of the plugin trains; :attr:`fine_tunes` unless overridden
        (``channel_prune`` trains only between iterative pruning steps)."""
        return cls.fine_tunes

    @classmethod
    def lineage_value(cls, params: dict[str, Any]) -> float | None:
        """The value of the :attr:`lineage` field for these parameters (its default when unset), or ``None``
        when the plugin has no lineage or this configuration's structure does not follow that field."""
        if cls.lineage is None:
            return None
        return params.get(cls.lineage, cls.Config.model_fields[cls.lineage].default)

    @classmethod
    def strongest(cls, space: dict[str, Any]) -> dict[str, Any]:
        """Parameters of the most compressing configuration in ``space``, by :attr:`stronger`.

        Used to tell, before searching, whether any configuration can meet the budget (a
        structure probe: nothing is trained). Per parameter: ``"high"`` takes a range's upper end
        or the largest choice, ``"low"`` the lower end or the smallest choice, a list of values the
        choice listed earliest; ``"any"``, and a parameter :attr:`stronger` does not name, takes
        the lower end or the first choice. A fixed value stays.
        """
        return {key: strongest_value(spec, cls.stronger.get(key, "any")) for key, spec in space.items()}

    @abc.abstractmethod
    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> "torch.nn.Module | Artefact":
        """Transforms the model.

        Args:
            model: A float model owned by this trial (modify it freely).
            ctx: Data, teacher, device and runtime of the trial.

        Returns:
            The transformed module, or for the quantize stage an :class:`Artefact`.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


DIRECTIONS = ("high", "low", "any")
"""The words :attr:`Plugin.stronger` may use (besides a list of values, most compressing first)."""


def strongest_value(spec: Any, direction: Any) -> Any:
    """The most compressing value of one parameter's range, choices (a list or ``{"choices": [...]}``) or
    fixed value (see :attr:`Plugin.stronger`)."""
    if isinstance(spec, list):
        spec = {"choices": spec}
    if isinstance(spec, dict) and "low" in spec:
        value = spec["high"] if direction == "high" else spec["low"]
        return [value] * spec["size"] if isinstance(spec.get("size"), int) else value
    if isinstance(spec, dict) and "choices" in spec:
        choices = list(spec["choices"])
        if isinstance(direction, (list, tuple)):
            order = list(direction)
            return min(choices, key=lambda c: order.index(c) if c in order else len(order))
        if direction in ("high", "low"):
            try:
                return max(choices) if direction == "high" else min(choices)
            except TypeError:  # choices that do not compare (mixed types): keep the listed order
                return choices[0]
        return choices[0]
    return spec
