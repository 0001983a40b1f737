"""Int8 post-training quantization with NNCF for the OpenVINO runtime.

The float module is exported to ONNX and converted to an OpenVINO model, which
``nncf.quantize`` calibrates on training images and quantizes (FakeQuantize nodes that the
OpenVINO CPU plugin runs as int8 kernels, VNNI/AMX where the CPU has them). With
``accuracy_control`` it uses ``nncf.quantize_with_accuracy_control`` instead: after quantizing,
layers are put back in float one group at a time, most harmful first, until the top-1 drop on the
validation split is at most ``max_drop_pp``.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import export_onnx, quiet, save_openvino_ir

COMPUTE_TYPES = ("Convolution", "GroupConvolution", "MatMul")


class NncfInt8(Plugin):
    """NNCF post-training int8 for OpenVINO (optionally accuracy-aware).

    Attributes of ``Config``:
        subset_size: Calibration images (single images from the training split).
        preset: ``performance`` (symmetric weights and activations) or ``mixed`` (asymmetric
            activations, better for non-ReLU activations such as GELU/SiLU).
        fast_bias_correction: Fast bias correction (``False`` runs the slower, more exact one).
        ignore_first_last: Keep the first and the last Convolution/MatMul in float.
        model_type: ``auto`` (``transformer`` when the graph has a Softmax, i.e. attention),
            ``cnn`` or ``transformer`` (NNCF's special handling of attention blocks).
        accuracy_control: Restore layers to float until the drop is within ``max_drop_pp``.
        max_drop_pp: Allowed top-1 drop in percentage points on the validation split
            (``accuracy_control`` only).
        validation_samples: Validation images used by ``accuracy_control`` (``None`` = all).
    """

    name = "nncf_int8"
    stage = Stage.QUANTIZE
    runtimes = frozenset({"openvino"})

    class Config(PluginConfig):
        subset_size: int = Field(default=300, ge=1, le=100_000)
        preset: Literal["performance", "mixed"] = "performance"
        fast_bias_correction: bool = True
        ignore_first_last: bool = False
        model_type: Literal["auto", "cnn", "transformer"] = "auto"
        accuracy_control: bool = False
        max_drop_pp: float = Field(default=1.0, ge=0.0, le=100.0)
        validation_samples: int | None = Field(default=None, ge=1)

    search_space = {
        "preset": ["performance", "mixed"],
        "subset_size": {"low": 128, "high": 512, "step": 128},
        "fast_bias_correction": [True, False],
        "ignore_first_last": [False, True],
    }
    probe_ignores = frozenset({"subset_size", "fast_bias_correction"})
    stronger = {"subset_size": "any", "preset": "any", "fast_bias_correction": "any",
                "ignore_first_last": [False, True], "model_type": "any", "accuracy_control": [False, True],
                "max_drop_pp": "high", "validation_samples": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Converts ``model`` to OpenVINO, quantizes it with NNCF and saves the IR.

        Returns:
            An ``openvino`` artefact (``.xml`` + ``.bin``) of precision ``int8``.
        """
        import nncf
        import openvino as ov

        cfg = self.config
        nncf.set_log_level(logging.ERROR)
        onnx_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
        with quiet():
            ov_model = ov.convert_model(str(onnx_path))
        onnx_path.unlink(missing_ok=True)

        # a structure probe (latency, size) needs the int8 graph, not good ranges
        subset = ctx.calibration_size(cfg.subset_size, probe=16)
        calibration = nncf.Dataset(_images(ctx.data.train.batches(
            ctx.batch_size, shuffle=True, seed=ctx.seed, limit=subset)))
        kwargs = dict(
            preset=nncf.QuantizationPreset(cfg.preset), subset_size=subset,
            fast_bias_correction=cfg.fast_bias_correction, target_device=nncf.TargetDevice.CPU,
            model_type=_model_type(ov_model, cfg.model_type),
            ignored_scope=nncf.IgnoredScope(names=_first_last(ov_model)) if cfg.ignore_first_last else None,
        )
        with quiet():
            # the probe skips accuracy control: all-int8 is the fastest, smallest graph it can pick,
            # so a probe that breaks the budget means the final model would too
            if cfg.accuracy_control and not ctx.structure_only:
                validation = nncf.Dataset(list(ctx.data.val.batches(ctx.batch_size, limit=cfg.validation_samples)))
                quantized = nncf.quantize_with_accuracy_control(
                    ov_model, calibration, validation, validation_fn=_top1_fraction,
                    max_drop=cfg.max_drop_pp / 100.0, drop_type=nncf.DropType.ABSOLUTE, **kwargs)
            else:
                quantized = nncf.quantize(ov_model, calibration, **kwargs)
        return save_openvino_ir(quantized, ctx.workdir / "model.int8.xml", "int8")


def _images(batches) -> list[np.ndarray]:
    """Single ``[1,3,H,W]`` float32 images: NNCF's statistics and ``subset_size`` count items."""
    return [x[i:i + 1].numpy().astype(np.float32) for x, _ in batches for i in range(len(x))]


def _top1_fraction(compiled_model, validation_data) -> float:
    """Top-1 in [0, 1] of a compiled OpenVINO model on ``(images, labels)`` batches."""
    correct = total = 0
    output = compiled_model.output(0)
    for inputs, labels in validation_data:
        logits = compiled_model(inputs.numpy().astype(np.float32))[output]
        correct += int((np.argmax(logits, 1) == labels.numpy()).sum())
        total += len(labels)
    return correct / max(total, 1)


def _compute_ops(ov_model) -> list[str]:
    """Friendly names of the Convolution/MatMul nodes that have constant weights, in graph order."""
    names = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_TYPES:
            continue
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze"):  # decompression chains
            weight = weight.input_value(0).get_node()
        if weight.get_type_name() == "Constant":
            names.append(op.get_friendly_name())
    return names


def _first_last(ov_model) -> list[str]:
    ops = _compute_ops(ov_model)
    return [ops[0], ops[-1]] if len(ops) >= 2 else ops


def _model_type(ov_model, choice: str):
    import nncf

    if choice == "transformer" or (choice == "auto" and any(
            op.get_type_name() == "Softmax" or op.get_type_name().startswith("Softmax")
            for op in ov_model.get_ordered_ops())):
        return nncf.ModelType.TRANSFORMER
    return None
