"""Low-rank factorisation by truncated SVD (the worked example of docs/plugins.md).

A weight ``W`` (``out x in``) of a Linear or a 1x1 convolution is replaced by two thinner layers,
``B @ A`` with ``A = sqrt(S_r) V_r^T`` (``r x in``) and ``B = U_r sqrt(S_r)`` (``out x r``), the
best rank-``r`` approximation of ``W`` (Eckart-Young). The layer then costs ``r * (out + in)``
parameters and multiply-adds per position instead of ``out * in``: smaller and faster on dense
kernels whenever ``r < out * in / (out + in)``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import classifier_layers, count_params


class SvdLowRank(Plugin):
    """Factorises every large Linear and 1x1 convolution into two of rank ``ceil(rank_ratio * min(out, in))``.

    Layers whose factorisation would not be smaller are left as they are, and so are the
    classifier, grouped or padded convolutions, and layers with fewer than ``min_features``
    input or output features. Works on any timm model: a ViT's ``qkv``, ``proj`` and MLP
    linears, ConvNeXt's MLPs, the 1x1 convolutions of ResNet, MobileNetV3 and EfficientNet.
    """

    name = "svd_lowrank"
    stage = Stage.PRUNE

    class Config(PluginConfig):
        """Parameters of :class:`SvdLowRank`.

        Attributes:
            rank_ratio: Kept rank as a share of ``min(out, in)``: lower compresses more.
            min_features: Layers with fewer input or output features are left whole.
        """

        rank_ratio: float = Field(default=0.25, gt=0.0, le=1.0, description="kept rank / min(out, in)")
        min_features: int = Field(default=16, ge=1, le=1_000_000)

    search_space = {"rank_ratio": {"low": 0.1, "high": 0.5, "step": 0.1}}
    stronger = {"rank_ratio": "low", "min_features": "low"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Replaces the layers in place and returns the model (eval mode, on the CPU).

        Args:
            model: A float timm model.
            ctx: The trial context (only its ``log`` is used: SVD needs no data).

        Returns:
            The factorised model.
        """
        cfg = self.config
        model = model.eval().cpu()
        before = count_params(model)
        keep = {id(m) for head in classifier_layers(model) for m in head.modules()}
        replaced = 0
        for name, layer in list(model.named_modules()):
            if id(layer) in keep or not _factorable(layer, cfg.min_features):
                continue
            out_f, in_f = layer.weight.shape[:2]
            rank = max(1, math.ceil(cfg.rank_ratio * min(out_f, in_f)))
            if rank * (out_f + in_f) >= out_f * in_f:
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, factorise(layer, rank))
            replaced += 1
        ctx.log(f"svd_lowrank: {replaced} layers factorised, {before} -> {count_params(model)} parameters")
        return model


def _factorable(layer: torch.nn.Module, min_features: int) -> bool:
    if isinstance(layer, torch.nn.Linear):
        return min(layer.in_features, layer.out_features) >= min_features
    if isinstance(layer, torch.nn.Conv2d):
        return (layer.kernel_size == (1, 1) and layer.groups == 1 and layer.padding in ((0, 0), "valid")
                and min(layer.in_channels, layer.out_channels) >= min_features)
    return False


@torch.no_grad()
def factorise(layer: torch.nn.Linear | torch.nn.Conv2d, rank: int) -> torch.nn.Sequential:
    """Two layers computing the best rank-``rank`` approximation of ``layer`` (bias on the second)."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    bias = layer.bias is not None
    if isinstance(layer, torch.nn.Linear):
        first, second = torch.nn.Linear(layer.in_features, rank, bias=False), torch.nn.Linear(rank, layer.out_features, bias=bias)
    else:
        first = torch.nn.Conv2d(layer.in_channels, rank, 1, stride=layer.stride, bias=False)
        second = torch.nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
    first.weight.copy_(first_w.reshape(first.weight.shape))
    second.weight.copy_(second_w.reshape(second.weight.shape))
    if bias:
        second.bias.copy_(layer.bias)
    return torch.nn.Sequential(first, second).to(layer.weight.dtype)
