"""Static int8 post-training quantization for ONNX Runtime (QDQ, calibrated activations)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
import torch
from pydantic import Field

from autocompress import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.runtimes import export_onnx, quiet


class Int8Static(Plugin):
    """Int8 weights (per channel by default) and uint8 activations whose ranges are calibrated
    on training batches. ONNX Runtime fuses the QDQ pairs into integer kernels (VNNI/AMX where the
    CPU has them), and the saved model stores int8 weights: about 4x smaller than fp32.
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

    search_space = {
        "calibration": ["minmax", "percentile"],
        "calibration_batches": {"low": 2, "high": 16, "step": 2},
    }

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        cfg = self.config
        float_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
        prepared = ctx.workdir / "prepared.onnx"
        with quiet():
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        batches = [x.numpy() for x, _ in ctx.data.train.batches(
            ctx.batch_size, shuffle=True, seed=ctx.seed, limit=cfg.calibration_batches * ctx.batch_size)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(batches)

            def get_next(self):
                batch = next(self._it, None)
                return None if batch is None else {"input": batch.astype(np.float32)}

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[cfg.calibration]
        extra = {"CalibPercentile": cfg.percentile} if cfg.calibration == "percentile" else {}
        out = ctx.workdir / "model.int8.onnx"
        with quiet():
            quantize_static(
                str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                nodes_to_exclude=_first_last(prepared) if cfg.keep_first_last_float else [], extra_options=extra,
            )
        for tmp in (float_path, prepared):
            tmp.unlink(missing_ok=True)
        return Artefact(out, "onnxruntime", "int8")


def _first_last(path) -> list[str]:
    graph = onnx.load(str(path)).graph
    compute = [n.name for n in graph.node if n.op_type in {"Conv", "Gemm", "MatMul"}]
    return [compute[0], compute[-1]] if len(compute) >= 2 else compute
