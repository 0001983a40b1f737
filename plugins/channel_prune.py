"""Structured channel pruning with torch-pruning: whole channels are removed, so the
model is physically smaller and faster on dense kernels."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from pydantic import Field

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import classifier_layers, fit, fused_attentions, model_stages, resize_attentions


class ChannelPrune(Plugin):
    """Removes the least important channels of every prunable layer (never the classifier).

    torch-pruning traces the model and removes coupled channels together, so residual sums,
    depthwise convolutions and squeeze-excitation blocks (ResNet, MobileNetV3, EfficientNet,
    ConvNeXt) stay consistent. In vision transformers (timm ``Attention``: a fused ``qkv``
    linear and ``num_heads``) the embedding width, the MLP width and the attention are pruned;
    the attention either loses the same dimensions in every head (``attention="head_dims"``) or
    whole heads (``attention="heads"``), and each attention's derived sizes (``num_heads``,
    ``head_dim``, ``attn_dim``, ``scale``) are updated afterwards so that
    ``num_heads * head_dim`` matches its ``qkv`` and ``proj`` layers.

    ``stage_ratios`` sets one ratio per stage instead (timm's ``feature_info`` stages, see
    :func:`autocompress.models.model_stages`: a ResNet-18 has five, the stem and ``layer1`` to
    ``layer4``), so the search can cut where it costs least; ``ratio`` is then unused. Coupled
    channels (a residual stream that crosses stages) follow the ratio of the first stage that holds
    one of their layers.

    Channel counts are rounded to multiples of ``round_to`` because odd widths can make a
    more-pruned model slower on vectorised kernels (in attention the rounding applies to the
    per-head width). With ``iterative_steps`` > 1 the ratio is reached in steps, with
    ``finetune_epochs`` of training after each step but the last; those fine-tunes report one
    learning curve (their epochs end to end) and are skipped in a structure probe.

    Importance criteria: ``l1``/``l2`` (weight norms of the coupled channels), ``bn_scale``
    (absolute scale of the BatchNorm/LayerNorm that follows; groups without a norm, such as a
    ViT's MLP and attention, are then kept), ``lamp`` (layer-adaptive magnitude) and ``taylor``
    (|weight x gradient|, with gradients accumulated on a few training batches).
    """

    name = "channel_prune"
    stage = Stage.PRUNE
    fine_tunes = True  # with iterative_steps > 1 and finetune_epochs > 0

    class Config(PluginConfig):
        """Parameters of :class:`ChannelPrune`.

        Attributes:
            ratio: Share of channels removed per layer (or overall with ``global_pruning``).
            importance: How channels are ranked.
            global_pruning: Rank channels across layers instead of per layer.
            round_to: Kept channel counts are multiples of this.
            iterative_steps: Steps in which the ratio is reached.
            finetune_epochs: Training epochs after each step but the last.
            max_layer_ratio: No layer loses more than this share of its channels.
            attention: In transformers, prune dimensions of each head or whole heads.
            stage_ratios: One ratio per stage of the model (``None``: ``ratio`` everywhere).
        """

        ratio: float = Field(default=0.5, ge=0.0, le=0.95, description="share of channels removed per layer")
        importance: Literal["l1", "l2", "bn_scale", "lamp", "taylor"] = "l2"
        global_pruning: bool = Field(default=False, description="rank channels across layers instead of per layer")
        round_to: int = Field(default=8, ge=1, le=128)
        iterative_steps: int = Field(default=1, ge=1, le=10)
        finetune_epochs: float = Field(default=0.0, ge=0.0, le=100.0)
        max_layer_ratio: float = Field(default=0.9, gt=0.0, le=1.0)
        attention: Literal["head_dims", "heads"] = Field(
            default="head_dims", description="transformers: shrink every head, or remove whole heads")
        stage_ratios: list[Annotated[float, Field(ge=0.0, le=0.95)]] | None = Field(
            default=None, min_length=1, max_length=32, description="one ratio per stage (timm feature_info)")

    search_space = {
        "ratio": {"low": 0.2, "high": 0.7, "step": 0.1},
        "importance": ["l2", "l1"],
    }
    probe_ignores = frozenset({"finetune_epochs"})
    lineage = "ratio"  # prunes further a fine-tuned model it pruned less (ctx.original: the base)
    stronger = {"ratio": "high", "importance": "any", "global_pruning": "any", "round_to": "low",
                "iterative_steps": "any", "finetune_epochs": "any", "max_layer_ratio": "high", "attention": "any",
                "stage_ratios": "high"}

    @classmethod
    def lineage_value(cls, params: dict[str, Any]) -> float | None:
        return None if params.get("stage_ratios") else super().lineage_value(params)

    @classmethod
    def trains(cls, params: dict) -> bool:
        cfg = cls.Config.model_validate(params)
        return cfg.iterative_steps > 1 and cfg.finetune_epochs > 0

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Prunes ``model`` in place and returns it (in eval mode, on the CPU).

        Args:
            model: A float timm model.
            ctx: The trial context; its training data is used by ``taylor`` and fine-tuning.

        Returns:
            The pruned model.
        """
        cfg = self.config
        if cfg.ratio == 0 and not cfg.stage_ratios:
            return model
        model.eval().cpu()
        if ctx.original is not None and cfg.iterative_steps == 1:
            return self._prune_further(model, ctx)
        attentions = fused_attentions(model)
        pruner = self._pruner(model, ctx, attentions)
        tunes = cfg.iterative_steps - 1 if cfg.finetune_epochs and not ctx.structure_only else 0
        per_tune = math.ceil(cfg.finetune_epochs)  # epochs each fine-tune reports
        report = ctx.epoch_reporter(tunes * per_tune) if tunes else None
        for step in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                _accumulate_gradients(model, ctx)
            pruner.step()
            model.zero_grad(set_to_none=True)
            resize_attentions(attentions, pruner.num_heads)
            if step < tunes:
                fit(model, ctx, epochs=cfg.finetune_epochs, lr=1e-3, seed=ctx.seed + step,
                    on_epoch=lambda epoch, net, done=step * per_tune: report(done + epoch, net))
                model.cpu()
        return model.eval()

    def _pruner(self, model: torch.nn.Module, ctx: TrialContext, attentions: list) -> tp.pruner.MetaPruner:
        cfg, heads = self.config, self.config.attention == "heads"
        by_layer = self._stage_ratio_dict(model) if cfg.stage_ratios else None
        with warnings.catch_warnings():
            # Unwrapped parameters (ViT cls_token/pos_embed, ConvNeXt gamma) have the channel
            # dimension last, which is what torch-pruning assumes and warns about.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.pruner.MetaPruner(
                model, ctx.example_input[:1].cpu(), importance=_importance(cfg.importance), pruning_ratio=cfg.ratio,
                global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps,
                max_pruning_ratio=cfg.max_layer_ratio, round_to=cfg.round_to,
                ignored_layers=classifier_layers(model),
                num_heads={a.qkv: a.num_heads for a in attentions},
                prune_num_heads=heads, prune_head_dims=not heads, head_pruning_ratio=cfg.ratio if heads else 0.0,
                pruning_ratio_dict=by_layer,
            )

    def _stage_ratio_dict(self, model: torch.nn.Module) -> dict[torch.nn.Module, float]:
        ratios, stages = self.config.stage_ratios, model_stages(model)
        if len(ratios) != len(stages):
            raise ValueError(f"stage_ratios: {len(ratios)} values for the {len(stages)} stages of this model "
                             f"({', '.join(name for name, _ in stages) or 'none: it has no feature_info'})")
        return {model.get_submodule(layer): ratio for (_, layers), ratio in zip(stages, ratios) for layer in layers}

    def _prune_further(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Lineage: ``model`` is a fine-tuned descendant of ``ctx.original`` pruned less; it keeps its most
        important channels down to the counts that pruning the original directly gives.

        torch-pruning counts a layer's target from the channels it had when its pruner was made; the
        pruner of the descendant is told the original's counts (by module name), so both round alike.
        """
        original = copy.deepcopy(ctx.original).eval().cpu()
        direct = self._pruner(original, ctx, fused_attentions(original))
        direct.step()  # fills in the original's counts per ranking scope
        names = {m: n for n, m in original.named_modules()}  # torch-pruning's own shape ops have none
        out_ch = {names.get(m): c for m, c in direct.layer_init_out_ch.items()}
        in_ch = {names.get(m): c for m, c in direct.layer_init_in_ch.items()}
        attentions = fused_attentions(model)
        pruner = self._pruner(model, ctx, attentions)
        own = {m: n for n, m in model.named_modules()}
        pruner.layer_init_out_ch = {m: out_ch.get(own.get(m), c) for m, c in pruner.layer_init_out_ch.items()}
        pruner.layer_init_in_ch = {m: in_ch.get(own.get(m), c) for m, c in pruner.layer_init_in_ch.items()}
        pruner._scope_initial_channels.update(direct._scope_initial_channels)
        if self.config.importance == "taylor":
            _accumulate_gradients(model, ctx)
        pruner.step()
        model.zero_grad(set_to_none=True)
        resize_attentions(attentions, pruner.num_heads)
        return model.eval()


def _importance(name: str):
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        # torch-pruning's BNScaleImportance only looks at BatchNorm; LayerNorm scales (ViT,
        # ConvNeXt) are the same signal for the channels they normalise.
        return tp.importance.GroupMagnitudeImportance(
            p=1, bias=False, target_types=(torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm))
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.TaylorImportance()


def _accumulate_gradients(model: torch.nn.Module, ctx: TrialContext, batches: int = 4) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    for i, (inputs, labels) in enumerate(ctx.data.train.batches(ctx.batch_size, shuffle=True, seed=ctx.seed)):
        if i >= batches:
            break
        F.cross_entropy(model(inputs), labels).backward()
    model.eval()
