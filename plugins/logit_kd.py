"""Logit knowledge distillation: fine-tunes the model towards the base model's soft labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from autocompress import Plugin, PluginConfig, Stage, TrialContext
from autocompress.measure import top1, module_predictor
from autocompress.models import fit


class LogitKD(Plugin):
    """Hinton-style distillation from the base model (the teacher) into the trial's model.

    Loss = ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, labels)``.
    Validation accuracy after each epoch is reported as the fine-tune's learning curve.
    """

    name = "logit_kd"
    stage = Stage.DISTILL
    changes_structure = False

    class Config(PluginConfig):
        temperature: float = Field(default=4.0, gt=0.0, le=50.0)
        alpha: float = Field(default=0.7, ge=0.0, le=1.0)
        epochs: float = Field(default=2.0, gt=0.0, le=1000.0)
        lr: float = Field(default=1e-3, gt=0.0, le=1.0)

    search_space = {
        "temperature": {"low": 1.0, "high": 8.0},
        "alpha": {"low": 0.3, "high": 0.9},
        "epochs": {"low": 1, "high": 4, "step": 1},
        "lr": {"low": 3e-4, "high": 3e-3, "log": True},
    }

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        if ctx.teacher is None:
            raise ValueError("logit_kd needs the base model as teacher")
        cfg = self.config
        teacher = ctx.teacher.to(ctx.device).eval()
        temp = cfg.temperature

        def loss_fn(logits, labels, inputs):
            with torch.no_grad():
                soft = teacher(inputs)
            kd = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(soft / temp, 1),
                          reduction="batchmean", log_target=True) * temp * temp
            return cfg.alpha * kd + (1 - cfg.alpha) * F.cross_entropy(logits, labels)

        def on_epoch(epoch, student):
            ctx.report(epoch + 1, top1(module_predictor(student, ctx.device), ctx.data.val, limit=512))

        return fit(model, ctx.data, epochs=cfg.epochs, lr=cfg.lr, seed=ctx.seed, batch_size=ctx.batch_size,
                   device=ctx.device, loss_fn=loss_fn, on_epoch=on_epoch).cpu()
