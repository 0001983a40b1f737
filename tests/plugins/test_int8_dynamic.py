import onnx
import onnx.numpy_helper
import torch

from autocompress.measure.runtimes import get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES


class TestInt8Dynamic(PluginContract):
    plugin_cls = load_plugin("int8_dynamic")
    models = FAMILIES


def _ops(path):
    counts = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _weight_bytes(path):
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def test_vit_linears_run_as_integer_matmuls_with_int8_weights(tmp_path):
    ctx = make_context(tmp_path, None)
    model = tiny_model("test_vit")
    x = ctx.data.test.example(16)
    with torch.no_grad():
        ref = model(x)
    runtime = get_runtime("onnxruntime")
    fp32 = runtime.save(model, ctx.example_input, tmp_path / "fp32.onnx")
    art = load_plugin("int8_dynamic").from_params({"ops": "matmul"}).apply(model, ctx)
    ops = _ops(art.path)
    # 6 blocks x (qkv, proj, fc1, fc2) + the classifier (a Gemm, rewritten as MatMul)
    assert ops.get("MatMulInteger", 0) >= 25 and ops.get("DynamicQuantizeLinear", 0) >= 25
    assert "Gemm" not in ops and "ConvInteger" not in ops
    graph = onnx.load(str(art.path)).graph
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= 25
    # weights, not file bytes: the graph itself is a large share of a model this small
    assert _weight_bytes(fp32.path) / _weight_bytes(art.path) > 2.5  # the patch embedding conv stays float here
    out = runtime.load(art, threads=1)(x)
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_conv_option_quantizes_convolutions(tmp_path):
    ctx = make_context(tmp_path, None)
    art = load_plugin("int8_dynamic").from_params({"ops": "matmul_conv"}).apply(tiny_model("test_resnet"), ctx)
    ops = _ops(art.path)
    assert ops.get("ConvInteger", 0) >= 10 and ops.get("MatMulInteger", 0) == 1 and "Conv" not in ops
