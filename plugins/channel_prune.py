"""Structured channel pruning with torch-pruning: whole channels are removed, so the
model is physically smaller and faster on dense kernels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from pydantic import Field

from autocompress import Plugin, PluginConfig, Stage, TrialContext
from autocompress.models import fit


class ChannelPrune(Plugin):
    """Removes the least important channels of every prunable layer (never the classifier).

    Channel counts are rounded to multiples of ``round_to`` because odd widths can make a
    more-pruned model slower on vectorised kernels. With ``iterative_steps`` > 1 the ratio is
    reached in steps, with ``finetune_epochs`` of training after each step but the last.
    """

    name = "channel_prune"
    stage = Stage.PRUNE

    class Config(PluginConfig):
        ratio: float = Field(default=0.5, ge=0.0, le=0.95, description="share of channels removed per layer")
        importance: Literal["l1", "l2", "bn_scale", "lamp", "taylor"] = "l2"
        global_pruning: bool = Field(default=False, description="rank channels across layers instead of per layer")
        round_to: int = Field(default=8, ge=1, le=128)
        iterative_steps: int = Field(default=1, ge=1, le=10)
        finetune_epochs: float = Field(default=0.0, ge=0.0, le=100.0)
        max_layer_ratio: float = Field(default=0.9, gt=0.0, le=1.0)

    search_space = {
        "ratio": {"low": 0.2, "high": 0.7, "step": 0.1},
        "importance": ["l2", "l1"],
    }

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        cfg = self.config
        if cfg.ratio == 0:
            return model
        model.eval().cpu()
        example = ctx.example_input[:1].cpu()
        pruner = tp.pruner.MetaPruner(
            model, example, importance=_importance(cfg.importance), pruning_ratio=cfg.ratio,
            global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps,
            max_pruning_ratio=cfg.max_layer_ratio, round_to=cfg.round_to,
            ignored_layers=_classifiers(model),
        )
        for step in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                _accumulate_gradients(model, ctx)
            pruner.step()
            model.zero_grad(set_to_none=True)
            if cfg.finetune_epochs and step < cfg.iterative_steps - 1:
                fit(model, ctx.data, epochs=cfg.finetune_epochs, lr=1e-3, seed=ctx.seed + step,
                    batch_size=ctx.batch_size, device=ctx.device)
                model.cpu()
        return model.eval()


def _importance(name: str):
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.TaylorImportance()


def _classifiers(model: torch.nn.Module) -> list[torch.nn.Module]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, torch.nn.Module) and not isinstance(head, torch.nn.Identity):
        return [head]
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    return last


def _accumulate_gradients(model: torch.nn.Module, ctx: TrialContext, batches: int = 4) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    for i, (inputs, labels) in enumerate(ctx.data.train.batches(ctx.batch_size, shuffle=True, seed=ctx.seed)):
        if i >= batches:
            break
        F.cross_entropy(model(inputs), labels).backward()
    model.eval()
