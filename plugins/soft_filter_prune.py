"""Soft filter pruning (He et al., IJCAI 2018, "Soft Filter Pruning for Accelerating Deep
Convolutional Neural Networks"): filters are zeroed, not removed, while the model fine-tunes,
so a filter zeroed after one epoch can grow back and another be zeroed instead; at the end the
zeroed filters are removed for real."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import classifier_layers, fit, fused_attentions, kd_loss, resize_attentions

_OUT_FNS = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_depthwise_conv_out_channels,
            tp.pruner.function.prune_linear_out_channels)


class SoftFilterPrune(Plugin):
    """Fine-tunes for ``epochs`` and, before the first and after each epoch, zeroes the ``ratio``
    share of filters with the smallest norm in every prunable layer; the zeroed filters stay
    trainable. After the last
    epoch the zeroed filters are removed with torch-pruning, so the model is physically smaller
    (the same widths as ``channel_prune`` at the same ``ratio`` and ``round_to``).

    Filters are ranked per coupled group as torch-pruning builds them (layers whose channels
    must go together, e.g. the convolutions feeding one residual sum, a convolution and the
    depthwise convolution after it, a ViT's fused ``qkv`` per head dimension): the importance
    of a channel is the sum over the group of the ``p``-norms of its output filters (weights of
    convolutions and linears). Zeroing writes zeros into those filters and their biases; the
    removal ranks by the same norms, so the removed channels are exactly the zeroed ones.

    The fine-tune distils from ``ctx.teacher`` when there is one (``alpha * T^2 * KL + (1 -
    alpha) * CE``) and uses plain cross-entropy otherwise. Validation accuracy after each epoch
    is reported as the learning curve. The classifier is never pruned. Removing a zeroed filter
    is exact where the channel is followed by nothing that sees it besides later layers'
    weights; where a norm follows (BatchNorm's shift, LayerNorm's statistics over channels)
    the outputs move slightly at the removal.
    """

    name = "soft_filter_prune"
    stage = Stage.PRUNE
    fine_tunes = True

    class Config(PluginConfig):
        """Parameters of :class:`SoftFilterPrune`.

        Attributes:
            ratio: Share of filters zeroed (and finally removed) per layer.
            epochs: Fine-tuning epochs; filters are zeroed after each (a fraction trains part
                of one epoch, then zeroes once).
            lr: Peak learning rate of the fine-tune (AdamW, one-cycle).
            norm: Filter norm used to rank filters.
            round_to: Kept channel counts are multiples of this.
            max_layer_ratio: No layer loses more than this share of its channels.
            temperature: Distillation temperature (with a teacher).
            alpha: Weight of the distillation term (with a teacher).
        """

        ratio: float = Field(default=0.3, ge=0.0, le=0.9, description="share of filters pruned per layer")
        epochs: float = Field(default=1.0, gt=0.0, le=100.0)
        lr: float = Field(default=1e-3, gt=0.0, le=1.0)
        norm: Literal["l2", "l1"] = "l2"
        round_to: int = Field(default=8, ge=1, le=128)
        max_layer_ratio: float = Field(default=0.9, gt=0.0, le=1.0)
        temperature: float = Field(default=4.0, gt=0.0, le=50.0)
        alpha: float = Field(default=0.7, ge=0.0, le=1.0)

    search_space = {
        "ratio": {"low": 0.2, "high": 0.6, "step": 0.1},
        "epochs": {"low": 1, "high": 3, "step": 1},
    }

    # the structure depends on the ratio alone: a probe takes the shortest schedule (and trains nothing)
    stronger = {"ratio": "high", "epochs": "low", "lr": "any", "norm": "any", "round_to": "low",
                "max_layer_ratio": "high", "temperature": "any", "alpha": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Soft-prunes while fine-tuning, then removes the zeroed filters.

        Args:
            model: A float timm model (modified in place).
            ctx: Training data, optional teacher, device and seed.

        Returns:
            The pruned model, in eval mode on the CPU.
        """
        cfg = self.config
        if cfg.ratio == 0:
            return model
        example = ctx.example_input[:1].cpu()
        teacher = ctx.frozen_teacher()
        loss_fn = kd_loss(teacher, temperature=cfg.temperature, alpha=cfg.alpha) if teacher is not None else None

        report = ctx.epoch_reporter(cfg.epochs)

        def on_epoch(epoch: int, net: torch.nn.Module) -> None:
            zeroed = soft_prune(net, example, cfg.ratio, p=_p(cfg.norm), round_to=cfg.round_to,
                                max_layer_ratio=cfg.max_layer_ratio)
            acc = report(epoch, net)
            ctx.log(f"soft_filter_prune: epoch {epoch + 1}: {zeroed} channels zeroed, val top-1 {acc:.2f}")

        # As in the authors' code: zero once before training, then after every epoch.
        model.cpu()
        soft_prune(model, example, cfg.ratio, p=_p(cfg.norm), round_to=cfg.round_to, max_layer_ratio=cfg.max_layer_ratio)
        if not ctx.structure_only:  # a latency/size probe: the kept channels' count is what matters
            fit(model, ctx, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, on_epoch=on_epoch)
        model.cpu().eval()
        hard_prune(model, example, cfg.ratio, p=_p(cfg.norm), round_to=cfg.round_to, max_layer_ratio=cfg.max_layer_ratio)
        return model.eval()


class FilterNormImportance(tp.importance.GroupMagnitudeImportance):
    """Importance of a channel = sum over its group of the p-norms (to the power p) of its output
    filters in convolutions and linears; zero exactly when all of them are zero."""

    def __init__(self, p: int = 2) -> None:
        super().__init__(p=p, group_reduction="sum", normalizer=None, bias=False,
                         target_types=[torch.nn.modules.conv._ConvNd, torch.nn.Linear])

    @torch.no_grad()
    def __call__(self, group):
        imps, roots = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in _OUT_FNS or not isinstance(layer, tuple(self.target_types)):
                continue
            w = layer.weight.data
            w = w.transpose(0, 1) if getattr(layer, "transposed", False) else w
            imps.append(w[idxs].flatten(1).abs().pow(self.p).sum(1))
            roots.append(group[i].root_idxs)
        if not imps:
            return None
        # Indexed by the root's channels (the first item of the group), whatever layer comes first
        # here: in an attention group the root is the projection's input, and q, k and v add up.
        out = torch.zeros(len(group[0].idxs))
        for imp, root in zip(imps, roots):
            if not any(r is None for r in root):
                out.scatter_add_(0, torch.as_tensor(root, dtype=torch.long), imp.float().cpu())
        return out


def soft_prune(model: torch.nn.Module, example: torch.Tensor, ratio: float, *, p: int = 2, round_to: int = 8,
               max_layer_ratio: float = 0.9) -> int:
    """Zeroes (in place) the lowest-norm filters of every prunable group; returns the channels zeroed."""
    was_training = model.training
    model.eval()
    zeroed = 0
    try:
        pruner = _pruner(model, example, ratio, p, round_to, max_layer_ratio)  # tracing needs autograd
        with torch.no_grad():
            for group in pruner.step(interactive=True):
                zeroed += len(group[0].idxs)
                for dep, idxs in group:
                    if dep.pruning_fn in _OUT_FNS and isinstance(dep.layer, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                        _zero_rows(dep.layer, idxs)
    finally:
        model.train(was_training)
    return zeroed


def hard_prune(model: torch.nn.Module, example: torch.Tensor, ratio: float, *, p: int = 2, round_to: int = 8,
               max_layer_ratio: float = 0.9) -> torch.nn.Module:
    """Removes the lowest-norm filters (the zeroed ones after :func:`soft_prune`) in place."""
    model.eval()
    attentions = fused_attentions(model)
    pruner = _pruner(model, example, ratio, p, round_to, max_layer_ratio)
    pruner.step()
    resize_attentions(attentions)
    return model


def _zero_rows(layer: torch.nn.Module, idxs) -> None:
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    if getattr(layer, "transposed", False):
        layer.weight.data[:, idxs] = 0
    else:
        layer.weight.data[idxs] = 0
    if getattr(layer, "bias", None) is not None:
        layer.bias.data[idxs] = 0


def _pruner(model, example, ratio, p, round_to, max_layer_ratio) -> tp.pruner.MetaPruner:
    example = example.to(next(model.parameters()).device)  # on_epoch sees the model on the training device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.pruner.MetaPruner(
            model, example, importance=FilterNormImportance(p), pruning_ratio=ratio, global_pruning=False,
            max_pruning_ratio=max_layer_ratio, round_to=round_to, ignored_layers=classifier_layers(model),
            num_heads={a.qkv: a.num_heads for a in fused_attentions(model)}, prune_head_dims=True, prune_num_heads=False,
        )


def _p(norm: str) -> int:
    return 1 if norm == "l1" else 2
