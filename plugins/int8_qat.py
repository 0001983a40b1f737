"""Quantization-aware training, then a real int8 ONNX Runtime model (QDQ static)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.nn.utils import parametrize

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import fit, kd_loss, static_int8

QUANTIZED_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


class Int8QAT(Plugin):
    """Fine-tunes with simulated int8 rounding, then quantizes for ONNX Runtime.

    What it does, step by step:

    1. Every ``Conv2d`` and ``Linear`` weight is replaced (``torch.nn.utils.parametrize``)
       by its per-output-channel symmetric int8 fake-quantization: ``scale = max|w| / 127``,
       ``w_q = round(w / scale) * scale``. Gradients pass straight through the rounding
       (straight-through estimator), so the float weights learn to sit well on the grid.
    2. The input of each such layer is fake-quantized to uint8 (asymmetric, per tensor) with a
       range tracked by an exponential moving average of the batch min/max during training,
       so the network also learns to tolerate activation rounding.
    3. The model is fine-tuned for ``epochs`` on the training split: cross-entropy, mixed with
       logit distillation from ``ctx.teacher`` (the float base) when ``alpha > 0``.
    4. The weight rounding is made permanent (the float weights now lie on the int8 grid), the
       activation fake-quantization is removed, and the model is exported to ONNX and
       quantized exactly as ``int8_static`` does with per-channel symmetric int8 weights.
       Folding BatchNorm into a convolution scales each output channel, which keeps its
       weights on a (scaled) per-channel grid, so ONNX Runtime's weight quantization
       reproduces the trained int8 weights: weight quantization adds no error beyond what was
       trained. Activation ranges are calibrated again by ONNX Runtime on training batches
       (the EMA ranges of step 2 are not carried over); ONNX Runtime also quantizes some
       tensors that step 2 did not simulate (residual additions, pooling), where it can
       differ from training.

    The artefact runs on ONNX Runtime's integer kernels and stores int8 weights (about 4x
    smaller than fp32), like ``int8_static``; fine-tuning makes it slower to produce.

    Attributes of ``Config``:
        epochs: Fine-tuning epochs (a fraction trains on that share of one epoch).
        lr: Peak learning rate (a fine-tune: keep it small).
        alpha: Weight of distillation from the teacher (0 = labels only).
        temperature: Distillation temperature.
        quantize_activations: Simulate activation rounding during training (step 2).
        ema: Momentum of the activation range average.
        calibration, calibration_batches: ONNX Runtime's activation calibration (step 4).
    """

    name = "int8_qat"
    stage = Stage.QUANTIZE
    fine_tunes = True
    runtimes = frozenset({"onnxruntime"})

    class Config(PluginConfig):
        epochs: float = Field(default=1.0, gt=0.0, le=100.0)
        lr: float = Field(default=1e-4, gt=0.0, le=0.1)
        alpha: float = Field(default=0.5, ge=0.0, le=1.0)
        temperature: float = Field(default=2.0, gt=0.0, le=50.0)
        quantize_activations: bool = True
        ema: float = Field(default=0.05, gt=0.0, le=1.0)
        calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
        calibration_batches: int = Field(default=8, ge=1, le=1024)

    search_space = {
        "epochs": {"low": 1, "high": 3, "step": 1},
        "lr": {"low": 3e-5, "high": 1e-3, "log": True},
        "alpha": {"low": 0.0, "high": 0.9},
    }
    probe_ignores = frozenset({"epochs", "lr", "alpha", "temperature", "ema", "calibration", "calibration_batches"})
    stronger = {"epochs": "any", "lr": "any", "alpha": "any", "temperature": "any", "quantize_activations": "any",
                "ema": "any", "calibration": "any", "calibration_batches": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Fine-tunes ``model`` with fake int8 quantization and saves it as an int8 ONNX model.

        Returns:
            An ``onnxruntime`` artefact of precision ``int8``.
        """
        cfg = self.config
        model = model.cpu()
        layers = [m for m in model.modules() if isinstance(m, QUANTIZED_LAYERS)]
        for layer in layers:
            parametrize.register_parametrization(layer, "weight", FakeQuantWeight(_channel_axis(layer)))
        acts = [ActivationFakeQuant(layer, cfg.ema) for layer in layers] if cfg.quantize_activations else []
        try:
            teacher = ctx.frozen_teacher() if cfg.alpha > 0 else None
            if not ctx.structure_only:  # a latency/size probe: the trained values do not matter
                fit(model, ctx, epochs=cfg.epochs, lr=cfg.lr,
                    loss_fn=kd_loss(teacher, temperature=cfg.temperature, alpha=cfg.alpha),
                    on_epoch=ctx.epoch_reporter(cfg.epochs), weight_decay=0.0)
        finally:
            for act in acts:
                act.remove()
            model.cpu()
            for layer in layers:
                if parametrize.is_parametrized(layer, "weight"):
                    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        return static_int8(model.eval(), ctx, calibration=cfg.calibration,
                           calibration_batches=cfg.calibration_batches, per_channel=True, weight_symmetric=True)


class FakeQuantWeight(torch.nn.Module):
    """Per-channel symmetric int8 fake quantization of a weight, with a straight-through gradient."""

    def __init__(self, axis: int = 0) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(weight.dim()) if d != self.axis]
        amax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
        scale = (amax / 127.0).clamp_min(1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, self.axis, -127, 127)


class ActivationFakeQuant:
    """A forward pre-hook that fake-quantizes a layer's input to uint8 with an EMA range."""

    def __init__(self, layer: torch.nn.Module, momentum: float) -> None:
        self.momentum = momentum
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.handle = layer.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x = args[0]
        if module.training:
            lo, hi = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
            if self.low is None:
                self.low, self.high = lo, hi
            else:
                self.low = self.low + self.momentum * (lo - self.low)
                self.high = self.high + self.momentum * (hi - self.high)
        if self.low is None:
            return None
        scale = float((self.high - self.low).clamp_min(1e-8)) / 255.0
        zero = int(round(min(255.0, max(0.0, -float(self.low) / scale))))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])

    def remove(self) -> None:
        self.handle.remove()


def _channel_axis(layer: torch.nn.Module) -> int:
    return 0  # Conv2d: [out, in/groups, kh, kw]; Linear: [out, in]
