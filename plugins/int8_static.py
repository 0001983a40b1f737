"""Static int8 post-training quantization for ONNX Runtime (QDQ, calibrated activations).

The calibrate-and-quantize step lives in :func:`autocompress.plugin.helpers.quantize_onnx_static`,
shared with the other ONNX Runtime int8 plugins (``int8_mixed``, ``int8_qat``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import first_last_compute, static_int8


class Int8Static(Plugin):
    """Int8 weights and uint8 activations whose ranges are calibrated on training batches.

    The model is exported to ONNX (BatchNorm folded into the convolutions), then
    ``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs
    (QDQ format) that ONNX Runtime fuses into integer kernels (QLinearConv, QLinearMatMul,
    MatMulInteger; VNNI/AMX where the CPU has them). The saved model stores int8 weights, so
    it is about 4x smaller than the fp32 export. LayerNormalization (ViT, ConvNeXt) and GELU
    (Erf) stay float: ONNX Runtime has no integer kernel for them.

    Attributes of ``Config``:
        calibration: How activation ranges are chosen from the calibration batches: ``minmax``,
            ``percentile`` (clips outliers) or ``entropy`` (KL-divergence, TensorRT style).
        percentile: Percentile kept by ``percentile`` calibration.
        calibration_batches: Training batches used for calibration.
        per_channel: One weight scale per output channel (recommended; per tensor otherwise).
        keep_first_last_float: Leave the first and last Conv/Gemm/MatMul in float.
        ops: ``all`` quantizes every op ORT can quantize (activations stay int8 between
            layers); ``compute`` only Conv/Gemm/MatMul (more float re-quantization, often
            more accurate).
        weight_symmetric: Symmetric weight ranges (ORT ``WeightSymmetric``).
        activation_symmetric: Symmetric activation ranges (ORT ``ActivationSymmetric``).
        moving_average: Moving average of per-batch min/max instead of the global extremes
            (ORT ``CalibMovingAverage``; ``minmax`` calibration only).
    """

    name = "int8_static"
    stage = Stage.QUANTIZE
    runtimes = frozenset({"onnxruntime"})

    class Config(PluginConfig):
        calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
        percentile: float = Field(default=99.999, ge=90.0, le=100.0)
        calibration_batches: int = Field(default=8, ge=1, le=1024)
        per_channel: bool = True
        keep_first_last_float: bool = False
        ops: Literal["all", "compute"] = "all"
        weight_symmetric: bool = True
        activation_symmetric: bool = False
        moving_average: bool = False

    search_space = {
        "calibration": ["minmax", "percentile"],
        "calibration_batches": {"low": 2, "high": 16, "step": 2},
    }
    probe_ignores = frozenset({"calibration", "percentile", "calibration_batches", "moving_average"})
    stronger = {"calibration": "any", "percentile": "any", "calibration_batches": "any", "per_channel": "any",
                "keep_first_last_float": [False, True], "ops": ["all", "compute"], "weight_symmetric": "any",
                "activation_symmetric": "any", "moving_average": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Exports ``model`` to ONNX, calibrates on training batches and quantizes it.

        Returns:
            An ``onnxruntime`` artefact of precision ``int8``.
        """
        cfg = self.config
        return static_int8(
            model, ctx, calibration=cfg.calibration, percentile=cfg.percentile,
            calibration_batches=cfg.calibration_batches, per_channel=cfg.per_channel,
            exclude=first_last_compute if cfg.keep_first_last_float else None, ops=cfg.ops,
            weight_symmetric=cfg.weight_symmetric, activation_symmetric=cfg.activation_symmetric,
            moving_average=cfg.moving_average,
        )
