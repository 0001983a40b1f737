"""Distillation into a smaller timm architecture: the base model teaches a new student."""

from __future__ import annotations

import timm
import torch
from pydantic import Field, field_validator

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import count_params, create_student, fit, kd_loss

# Smallest first: ``stronger`` ranks them so.
DEFAULT_STUDENTS = ["mobilenetv3_small_050", "mobilenetv3_small_100", "efficientnet_lite0", "resnet10t"]


class StudentKD(Plugin):
    """Replaces the model with a smaller timm architecture trained by logit distillation.

    The student (``student``, any timm model name) is created with the base model's number of
    classes and image size, from random weights (or timm's pretrained weights with
    ``pretrained: true``, which needs them downloadable or cached), and trained for
    ``epochs`` on the training split with
    ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, labels)``.
    The teacher is ``ctx.teacher``, the float base model (the incoming model when there is
    none).

    The incoming model is discarded: anything a prune stage did to it is lost, so combining
    this plugin with a prune stage only repeats the no-prune result at the prune stage's cost
    (the trial still completes; a line is logged when the incoming model was changed). Prefer
    search spaces that pair ``student_kd`` with prune ``none``. A student that is not smaller
    than the teacher is allowed but logged.

    Attributes of ``Config``:
        student: timm model name of the student.
        pretrained: Start from timm's pretrained weights (needs them available).
        temperature, alpha: Distillation temperature and weight of the distillation term.
        epochs: Training epochs (a student from scratch needs many more than a fine-tune).
        lr: Peak learning rate.
    """

    name = "student_kd"
    stage = Stage.DISTILL
    changes_structure = True
    fine_tunes = True

    class Config(PluginConfig):
        student: str = "mobilenetv3_small_100"
        pretrained: bool = False
        temperature: float = Field(default=4.0, gt=0.0, le=50.0)
        alpha: float = Field(default=0.7, ge=0.0, le=1.0)
        epochs: float = Field(default=10.0, gt=0.0, le=1000.0)
        lr: float = Field(default=3e-3, gt=0.0, le=1.0)

        @field_validator("student")
        @classmethod
        def _known(cls, value: str) -> str:
            if not timm.is_model(value):
                raise ValueError(f"unknown timm model {value!r}")
            return value

    search_space = {
        "student": list(DEFAULT_STUDENTS),
        "epochs": {"low": 5, "high": 20, "step": 5},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "alpha": {"low": 0.3, "high": 0.9},
    }
    stronger = {"student": list(DEFAULT_STUDENTS), "pretrained": "any", "temperature": "any", "alpha": "any",
                "epochs": "any", "lr": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Builds the student, distills the teacher into it and returns it (the input is discarded).

        Returns:
            The trained student, in eval mode on the CPU.
        """
        cfg = self.config
        teacher = (ctx.teacher if ctx.teacher is not None else model).to(ctx.device).eval()
        if ctx.teacher is not None and count_params(model) != count_params(ctx.teacher):
            ctx.log(f"student_kd: the incoming model was changed by an earlier stage; it is replaced by {cfg.student}")
        img_size = int(ctx.example_input.shape[-1])
        with torch.no_grad():
            num_classes = int(teacher(ctx.example_input[:1].to(ctx.device)).shape[-1])
        torch.manual_seed(ctx.seed)
        student = create_student(cfg.student, num_classes=num_classes, img_size=img_size, pretrained=cfg.pretrained)
        if count_params(student) >= count_params(teacher):
            ctx.log(f"student_kd: {cfg.student} ({count_params(student)} parameters) is not smaller than the teacher "
                    f"({count_params(teacher)})")
        if ctx.structure_only:  # a latency/size probe: the student's architecture is all that matters
            return student.eval()
        return fit(student, ctx, epochs=cfg.epochs, lr=cfg.lr,
                   loss_fn=kd_loss(ctx.frozen_teacher() if ctx.teacher is not None else teacher,
                                   temperature=cfg.temperature, alpha=cfg.alpha),
                   on_epoch=ctx.epoch_reporter(cfg.epochs)).cpu()
