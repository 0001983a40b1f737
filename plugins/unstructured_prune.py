"""Unstructured magnitude pruning: the smallest weights are set to exactly zero.

What it does and does not buy:

* **Latency: nothing.** The tensors keep their shapes and every runtime here runs dense
  kernels, which multiply the zeros like any other value.
* **Size: only through a compact file.** The ``onnxruntime`` runtime saves float initializers
  that are mostly zero as ONNX ``sparse_initializer`` entries (non-zero values plus int64
  positions, see :func:`autocompress.measure.runtimes.store_sparse_initializers`); ONNX Runtime densifies
  them at load, so outputs are unchanged. With int64 positions a tensor only gets smaller above
  about 67% zeros (at 80% the file is about 40% smaller, at 90% about 70%). ``torch`` ``.pt2``
  artefacts and int8 artefacts stay dense: there this plugin changes nothing but accuracy.
* The parameter count reported by trials stays the same; the size on disk is what changes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from autocompress.plugin import Plugin, PluginConfig, Stage, TrialContext


class UnstructuredPrune(Plugin):
    """Zeroes the ``sparsity`` share of smallest-magnitude weights of convolutions and linears.

    Weights are ranked by absolute value across all pruned layers (``scope="global"``) or within
    each layer (``scope="layer"``); exactly ``round(sparsity * n)`` weights of the ranked pool
    become zero. The zeros are written into the weights themselves: no masks, buffers or
    parametrizations stay on the model. The classifier, biases, norms, embeddings and layers
    with fewer than ``min_layer_params`` weights (depthwise kernels, stems of tiny models) are
    left dense.

    With ``keep_zeros`` (default) each pruned weight gets a gradient hook that zeroes the
    gradient where the weight is zero, so a later fine-tune in the same process (the distill
    stage) keeps the sparsity: with zero gradients AdamW/SGD leave a zero weight at zero. The
    hook holds no mask (it reads the weight's own zeros); it does not survive ``copy.deepcopy``
    or pickling, after which fine-tuning would make the weights dense again.
    """

    name = "unstructured_prune"
    stage = Stage.PRUNE
    changes_structure = True  # the saved size depends on it (not the latency)

    class Config(PluginConfig):
        """Parameters of :class:`UnstructuredPrune`.

        Attributes:
            sparsity: Share of the ranked weights set to zero.
            scope: Rank across all pruned layers (``global``) or within each (``layer``).
            min_layer_params: Layers with fewer weights are not pruned.
            prune_classifier: Also prune the classifier's weights.
            keep_zeros: Keep pruned weights at zero during later fine-tuning in this process.
        """

        sparsity: float = Field(default=0.8, ge=0.0, le=0.99, description="share of weights set to zero")
        scope: Literal["global", "layer"] = "global"
        min_layer_params: int = Field(default=1024, ge=0, le=10_000_000)
        prune_classifier: bool = False
        keep_zeros: bool = True

    search_space = {
        "sparsity": {"low": 0.7, "high": 0.95, "step": 0.05},
        "scope": ["global", "layer"],
    }
    stronger = {"sparsity": "high", "scope": "any", "min_layer_params": "low", "prune_classifier": [True, False],
                "keep_zeros": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> torch.nn.Module:
        """Zeroes weights of ``model`` in place and returns it.

        Args:
            model: A float model.
            ctx: The trial context (unused: magnitude pruning needs no data).

        Returns:
            The same module with the pruned weights at zero.
        """
        cfg = self.config
        weights = prunable_weights(model, cfg.min_layer_params, cfg.prune_classifier)
        if cfg.sparsity == 0 or not weights:
            return model
        with torch.no_grad():
            if cfg.scope == "global":
                _zero_smallest(weights, cfg.sparsity)
            else:
                for w in weights:
                    _zero_smallest([w], cfg.sparsity)
        if cfg.keep_zeros:
            for w in weights:
                w.register_hook(_keep_zero_hook(w))
        return model


def prunable_weights(model: torch.nn.Module, min_params: int = 0, classifier: bool = False) -> list[torch.nn.Parameter]:
    """Weights of the convolutions and linears that unstructured pruning ranks."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = set() if classifier or not isinstance(head, torch.nn.Module) else {id(m) for m in head.modules()}
    out, seen = [], set()
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)) and id(module) not in skip:
            w = module.weight
            if w.numel() >= max(min_params, 1) and id(w) not in seen:
                seen.add(id(w))
                out.append(w)
    return out


def sparsity_of(weights: list[torch.Tensor]) -> float:
    """Share of exact zeros in ``weights``."""
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def _zero_smallest(weights: list[torch.Tensor], sparsity: float) -> None:
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return
    # argsort rather than a threshold: ties at the threshold must not over-prune.
    drop = torch.zeros(flat.numel(), dtype=torch.bool)
    drop[torch.argsort(flat, stable=True)[:k]] = True
    start = 0
    for w in weights:
        n = w.numel()
        w.data.masked_fill_(drop[start:start + n].view(w.shape), 0)
        start += n


def _keep_zero_hook(weight: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * (weight.detach() != 0)

    return hook
