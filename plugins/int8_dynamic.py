"""Dynamic (online) int8 quantization for ONNX Runtime: int8 weights, activations quantized per call."""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import export_onnx, quiet


class Int8Dynamic(Plugin):
    """Int8 weights; activations are quantized on the fly, from each call's own range.

    ``onnxruntime.quantization.quantize_dynamic`` replaces each MatMul with a constant weight
    by DynamicQuantizeLinear + MatMulInteger (and, with ``ops="matmul_conv"``, each Conv by
    ConvInteger). No calibration data is needed and no activation range can be wrong, so it
    suits Linear-heavy models (ViT, the MLPs of ConvNeXt) whose activations have outliers.
    The cost is computing each activation's range at run time, and ConvInteger kernels are
    often slower than float convolutions: for convolutional networks prefer ``int8_static``.

    Gemm nodes (the classifier of most timm models) have no dynamic integer kernel in ONNX
    Runtime, so they are rewritten as MatMul + Add first and then quantized like the rest.
    Attention's activation-by-activation MatMuls, LayerNorm, GELU and Softmax stay float.

    Attributes of ``Config``:
        ops: ``matmul`` quantizes MatMul/Gemm only; ``matmul_conv`` Conv layers too.
        per_channel: One weight scale per output channel.
        reduce_range: 7-bit weights, for CPUs without VNNI where 8-bit products can saturate.
    """

    name = "int8_dynamic"
    stage = Stage.QUANTIZE
    runtimes = frozenset({"onnxruntime"})

    class Config(PluginConfig):
        ops: Literal["matmul", "matmul_conv"] = "matmul_conv"
        per_channel: bool = True
        reduce_range: bool = False

    search_space = {
        "ops": ["matmul_conv", "matmul"],
        "per_channel": [True, False],
    }
    stronger = {"ops": ["matmul_conv", "matmul"], "per_channel": "any", "reduce_range": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Exports ``model`` to ONNX and quantizes its weights to int8.

        Returns:
            An ``onnxruntime`` artefact of precision ``int8``.
        """
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        cfg = self.config
        float_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
        prepared = ctx.workdir / "prepared.onnx"
        with quiet():
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph_model = onnx.load(str(prepared))
        _gemm_to_matmul(graph_model.graph)
        onnx.save(graph_model, str(prepared))
        ops = ["MatMul", "Conv"] if cfg.ops == "matmul_conv" else ["MatMul"]
        out = ctx.workdir / "model.int8.onnx"
        with quiet():
            quantize_dynamic(str(prepared), str(out), op_types_to_quantize=ops, per_channel=cfg.per_channel,
                             reduce_range=cfg.reduce_range, weight_type=QuantType.QInt8,
                             extra_options={"MatMulConstBOnly": True})
        for tmp in (float_path, prepared):
            tmp.unlink(missing_ok=True)
        return Artefact(out, "onnxruntime", "int8")


def _gemm_to_matmul(graph: onnx.GraphProto) -> int:
    """Rewrites ``Gemm(A, B_const, C)`` (alpha = beta = 1, no transA) as ``MatMul`` + ``Add`` in place.

    Returns:
        How many Gemm nodes were rewritten.
    """
    inits = {t.name: t for t in graph.initializer}
    rewritten = 0
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "Gemm" and node.input[1] in inits and attrs.get("transA", 0) == 0
              and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)
        if not ok:
            graph.node.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        w_name = f"{node.input[1]}_matmul_t{rewritten}"
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        graph.node.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul"))
        if has_bias:
            graph.node.append(onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_add"))
        rewritten += 1
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return rewritten
