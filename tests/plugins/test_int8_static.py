import onnx

from autocompress.runtimes import get_runtime
from autocompress.testing import PluginContract, load_plugin, make_context, tiny_model
from autocompress.models import fit
from autocompress.measure import module_predictor, top1


class TestInt8Static(PluginContract):
    plugin_cls = load_plugin("int8_static")
    params = {"calibration_batches": 2}


def test_int8_artefact_has_int8_weights_is_4x_smaller_and_keeps_accuracy(tmp_path):
    ctx = make_context(tmp_path, None)
    model = fit(tiny_model("resnet18"), ctx.data, epochs=8, lr=3e-3)
    float_acc = top1(module_predictor(model), ctx.data.val)
    runtime = get_runtime("onnxruntime")
    fp32 = runtime.save(model, ctx.example_input, tmp_path / "fp32.onnx")
    art = load_plugin("int8_static").from_params({"calibration_batches": 4}).apply(model, ctx)
    graph = onnx.load(str(art.path)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "no int8 initializers"
    assert {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert fp32.size_bytes() / art.size_bytes() > 3.5
    int8_acc = top1(runtime.load(art, threads=1), ctx.data.val)
    assert int8_acc >= float_acc - 5


def test_keep_first_last_float_leaves_those_layers_unquantized(tmp_path):
    ctx = make_context(tmp_path, None)
    plain = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(tiny_model("test_resnet"), ctx)
    plain_size = plain.size_bytes()
    ctx2 = make_context(tmp_path / "b", None)
    kept = load_plugin("int8_static").from_params({"calibration_batches": 1, "keep_first_last_float": True}).apply(
        tiny_model("test_resnet"), ctx2)
    assert kept.size_bytes() > plain_size
