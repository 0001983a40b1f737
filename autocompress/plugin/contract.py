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
from dataclasses import dataclass, field
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
        device: Torch device for training.
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
        log: Callback for one line of progress.
        structure_only: Only latency and size will be measured (a cheap probe): skip training.
        teacher_outputs: ``teacher`` with its outputs kept per batch for the run (``search.cache``
            on a CPU run), or ``None``; plugins use it through :meth:`frozen_teacher`.
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
        fine_tunes: Whether it trains (minutes, not seconds): such trials have their structure
            measured first and may be stopped early (it must skip training when
            ``ctx.structure_only`` and report per-epoch accuracy through ``ctx.report``).
        probe_ignores: ``Config`` fields that change the weights but not the structure
            (calibration, a fine-tune's schedule): trials that differ only in them share one
            structure probe of latency and size.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    search_space: ClassVar[dict[str, Any]] = {}
    runtimes: ClassVar[frozenset[str] | None] = None
    changes_structure: ClassVar[bool] = True
    fine_tunes: ClassVar[bool] = False
    probe_ignores: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, config: PluginConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Plugin":
        """Builds the plugin from plain parameters, validated by its ``Config``."""
        return cls(config=cls.Config.model_validate(params))

    @classmethod
    def strongest(cls, space: dict[str, Any]) -> dict[str, Any]:
        """Parameters of the most compressing configuration in ``space``.

        Used to tell, before searching, whether any configuration can meet the budget.
        The default takes each range's upper end and each list's first choice.
        """
        out = {}
        for key, spec in space.items():
            if isinstance(spec, dict) and "high" in spec:
                out[key] = spec["high"]
            elif isinstance(spec, dict) and "choices" in spec:
                out[key] = spec["choices"][0]
            else:
                out[key] = spec
        return out

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
