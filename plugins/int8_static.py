"""Static int8 post-training quantization for ONNX Runtime (QDQ, calibrated activations).

Besides the plugin, this file holds :func:`quantize_onnx_static`, the calibrate-and-quantize
step that the other ONNX Runtime int8 plugins (``int8_mixed``, ``int8_qat``) reuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import onnx
import torch
from pydantic import Field

from autocompress import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.measure.runtimes import export_onnx, quiet

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# ORT has no integer kernel for these; quantizing around them only adds rounding error.
ALWAYS_FLOAT_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "BatchNormalization"})


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

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Exports ``model`` to ONNX, calibrates on training batches and quantizes it.

        Returns:
            An ``onnxruntime`` artefact of precision ``int8``.
        """
        cfg = self.config
        float_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
        out = quantize_onnx_static(
            float_path, ctx, ctx.workdir / "model.int8.onnx", calibration=cfg.calibration,
            percentile=cfg.percentile, calibration_batches=1 if ctx.structure_only else cfg.calibration_batches, per_channel=cfg.per_channel,
            exclude=_first_last if cfg.keep_first_last_float else None, ops=cfg.ops,
            weight_symmetric=cfg.weight_symmetric, activation_symmetric=cfg.activation_symmetric,
            moving_average=cfg.moving_average,
        )
        float_path.unlink(missing_ok=True)
        return Artefact(out, "onnxruntime", "int8")


def quantize_onnx_static(
    float_path: Path, ctx: TrialContext, out: Path, *, calibration: str = "minmax", percentile: float = 99.999,
    calibration_batches: int = 8, per_channel: bool = True, exclude=None, ops: str = "all",
    weight_symmetric: bool = True, activation_symmetric: bool = False, moving_average: bool = False,
) -> Path:
    """Calibrates and quantizes a float ONNX file into a QDQ int8 ONNX file.

    Args:
        float_path: The float model (as written by :func:`autocompress.measure.runtimes.export_onnx`).
        ctx: Its training split gives the calibration batches.
        out: Where to write the quantized model.
        exclude: ``exclude(prepared_graph) -> node names`` to keep float, or ``None``.
        Others: as :class:`Int8Static`'s ``Config``.

    Returns:
        ``out``.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(out).with_name(Path(out).stem + ".prepared.onnx")
    with quiet():
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    batches = [x.numpy() for x, _ in ctx.data.train.batches(
        ctx.batch_size, shuffle=True, seed=ctx.seed, limit=calibration_batches * ctx.batch_size)]
    # ORT's histogram calibrators (percentile, entropy) stack the batches: keep equal sizes only
    batches = [b for b in batches if b.shape[0] == batches[0].shape[0]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"input": batch.astype(np.float32)}

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    extra: dict = {"WeightSymmetric": weight_symmetric, "ActivationSymmetric": activation_symmetric}
    if calibration == "percentile":
        extra["CalibPercentile"] = percentile
    if calibration == "minmax" and moving_average:
        extra["CalibMovingAverage"] = True
    op_types = COMPUTE_OPS if ops == "compute" else sorted(set(QDQRegistry) - ALWAYS_FLOAT_OPS)
    nodes_to_exclude = list(exclude(onnx.load(str(prepared)).graph)) if exclude is not None else []
    with quiet():
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            op_types_to_quantize=list(op_types), nodes_to_exclude=nodes_to_exclude, extra_options=extra,
        )
    prepared.unlink(missing_ok=True)
    for leftover in Path(out).parent.glob("augmented_model*.onnx"):
        leftover.unlink(missing_ok=True)
    return Path(out)


def _first_last(graph: onnx.GraphProto) -> Iterable[str]:
    compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS]
    return [compute[0], compute[-1]] if len(compute) >= 2 else compute
