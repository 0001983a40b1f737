"""Logit knowledge distillation: fine-tunes the model towards the base model's soft labels,
optionally also matching one intermediate feature map (feature distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import fit, kd_loss

ADAPTER = "_kd_feature_adapter"


class LogitKD(Plugin):
    """Hinton-style distillation from the base model (the teacher) into the trial's model.

    Loss = ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, labels)``
    ``+ feature_weight * ||A(f_s) - f_t||^2 / mean(f_t^2)``.

    The feature term (off by default, ``feature_weight = 0``) matches the output of one timm
    feature stage (``feature_info[feature_stage]``: a ResNet layer, a ConvNeXt stage, a ViT
    block, ...) of the student and the teacher, captured with forward hooks. It is divided by
    the teacher feature's mean square, so its scale does not depend on the layer. When a
    pruned student has fewer channels there, ``A`` is a 1x1 convolution (a linear map over the
    last axis for token features) trained with the student and discarded afterwards;
    otherwise ``A`` is the identity.

    Validation accuracy after each epoch is reported as the fine-tune's learning curve. With the
    search's fidelity ladder (``search.rungs``) ``epochs`` is the trial's rung, set by the scheduler,
    and a promoted trial continues its fine-tune from the previous rung.

    Attributes of ``Config``:
        temperature, alpha: Distillation temperature and weight of the logit term.
        epochs, lr: Fine-tuning epochs and peak learning rate.
        feature_weight: Weight of the feature term (0 = logits only).
        feature_stage: Index into the model's ``feature_info`` (negative counts from the end).
    """

    name = "logit_kd"
    stage = Stage.DISTILL
    changes_structure = False
    fine_tunes = True

    class Config(PluginConfig):
        temperature: float = Field(default=4.0, gt=0.0, le=50.0)
        alpha: float = Field(default=0.7, ge=0.0, le=1.0)
        epochs: float = Field(default=2.0, gt=0.0, le=1000.0)
        lr: float = Field(default=1e-3, gt=0.0, le=1.0)
        feature_weight: float = Field(default=0.0, ge=0.0, le=100.0)
        feature_stage: int = Field(default=-1, ge=-16, le=15)

    search_space = {
        # a coarse grid: trials that share it reuse each other's fine-tuned model (search.cache)
        "temperature": {"low": 2.0, "high": 8.0, "step": 2.0},
        "alpha": {"low": 0.3, "high": 0.9, "step": 0.2},
        "epochs": {"low": 1, "high": 4, "step": 1},
        "lr": [1e-4, 3e-4, 1e-3, 3e-3],
    }
    # a trained base (a checkpoint, timm's weights) forgets at the rates a briefly trained one needs
    pretrained_search_space = {"lr": [1e-4, 3e-4, 1e-3]}
    fidelity = "epochs"  # with search.rungs the scheduler sets the fine-tune's length
    stronger = {"temperature": "any", "alpha": "any", "epochs": "any", "lr": "any", "feature_weight": "any",
                "feature_stage": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Fine-tunes ``model`` towards the teacher.

        Raises:
            ValueError: No teacher, or ``feature_weight > 0`` on a model whose feature stage
                cannot be matched with the teacher's.
        """
        if ctx.teacher is None:
            raise ValueError("logit_kd needs the base model as teacher")
        if ctx.structure_only:  # distillation changes no structure: a probe has nothing to measure here
            return model
        cfg = self.config
        teacher = ctx.teacher.to(ctx.device).eval()
        features = FeatureMatch(model, teacher, cfg.feature_stage, ctx) if cfg.feature_weight > 0 else None
        # feature matching reads the teacher's hooks, so the teacher itself must run
        loss_fn = kd_loss(teacher if features is not None else ctx.frozen_teacher(),
                          temperature=cfg.temperature, alpha=cfg.alpha,
                          extra=(lambda: cfg.feature_weight * features.loss()) if features is not None else None)
        try:
            out = fit(model, ctx, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn,
                      on_epoch=ctx.epoch_reporter(cfg.epochs))
        finally:
            if features is not None:
                features.remove()
        return out.cpu()


class FeatureMatch:
    """Captures one feature stage of student and teacher and scores their distance.

    The adapter (when channel counts differ) is registered as a submodule of the student
    while training, so the optimizer of :func:`autocompress.plugin.helpers.fit` trains it too;
    :meth:`remove` detaches it and the hooks.
    """

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, stage: int, ctx: TrialContext) -> None:
        self.student, self.teacher = student, teacher
        name_s, name_t = _stage_module(student, stage), _stage_module(teacher, stage)
        self.cache: dict[str, torch.Tensor] = {}
        self.handles = [
            dict(student.named_modules())[name_s].register_forward_hook(self._keep("student")),
            dict(teacher.named_modules())[name_t].register_forward_hook(self._keep("teacher")),
        ]
        example = ctx.example_input[:2].to(ctx.device)
        was_training = student.training
        with torch.no_grad():
            student.to(ctx.device).eval()(example)
            teacher(example)
        student.train(was_training)
        fs, ft = self.cache["student"], self.cache["teacher"]
        if fs.dim() != ft.dim() or fs.dim() not in (3, 4) or _spatial(fs) != _spatial(ft):
            self.remove()
            raise ValueError(f"logit_kd: feature stage {stage} of student {tuple(fs.shape)} and teacher "
                             f"{tuple(ft.shape)} cannot be matched")
        self.tokens = fs.dim() == 3  # [B, N, C] (ViT) rather than [B, C, H, W]
        cs, ct = (fs.shape[-1], ft.shape[-1]) if self.tokens else (fs.shape[1], ft.shape[1])
        self.adapter: torch.nn.Module | None = None
        if cs != ct:
            self.adapter = (torch.nn.Linear(cs, ct) if self.tokens else torch.nn.Conv2d(cs, ct, 1)).to(ctx.device)
            student.add_module(ADAPTER, self.adapter)
        self.cache.clear()

    def _keep(self, key: str):
        def hook(module, args, output):
            self.cache[key] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def loss(self) -> torch.Tensor:
        fs, ft = self.cache.pop("student"), self.cache.pop("teacher").detach()
        if self.adapter is not None:
            fs = self.adapter(fs)
        return F.mse_loss(fs, ft) / ft.pow(2).mean().clamp_min(1e-6)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if hasattr(self.student, ADAPTER):
            delattr(self.student, ADAPTER)
        self.cache.clear()


def _stage_module(model: torch.nn.Module, stage: int) -> str:
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"logit_kd: {type(model).__name__} has no feature_info, so feature_weight must be 0")
    names = [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
    if not -len(names) <= stage < len(names):
        raise ValueError(f"logit_kd: feature_stage {stage} is out of range; this model has {len(names)} stages")
    return names[stage]


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[1:-1]) if x.dim() == 3 else tuple(x.shape[2:])
