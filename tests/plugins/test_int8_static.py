import onnx
import pytest
import torch

from autocompress.measure.accuracy import module_predictor, top1
from autocompress.models import fit
from autocompress.measure.runtimes import get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES


class TestInt8Static(PluginContract):
    plugin_cls = load_plugin("int8_static")
    params = {"calibration_batches": 2}
    models = FAMILIES


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights, but BatchNorm scales away from timm's zero init (which leaves whole convolutions
    at zero after folding, and the fp32 export then stores them sparse)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return model


def test_resnet18_artefact_has_int8_weights_and_is_4x_smaller(tmp_path):
    ctx = make_context(tmp_path, None)
    model = trained_like(tiny_model("resnet18"))
    fp32 = get_runtime("onnxruntime").save(model, ctx.example_input, tmp_path / "fp32.onnx")
    art = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(model, ctx)
    graph = onnx.load(str(art.path)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20, "no int8 initializers"
    assert {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert fp32.size_bytes() / art.size_bytes() > 3.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ctx = make_context(tmp_path_factory.mktemp("trained"), None)
    model = fit(tiny_model("test_resnet"), ctx.data, epochs=6, lr=1e-2)
    return model, top1(module_predictor(model), ctx.data.val)


@pytest.mark.parametrize("params", [
    {"calibration": "percentile", "percentile": 99.99},
    {"calibration": "entropy"},
    {"per_channel": False, "moving_average": True, "ops": "compute", "activation_symmetric": True},
])
def test_calibration_options_keep_accuracy(trained, params, tmp_path):
    model, float_acc = trained
    ctx = make_context(tmp_path, None)
    art = load_plugin("int8_static").from_params({"calibration_batches": 2, **params}).apply(
        __import__("copy").deepcopy(model), ctx)
    int8_acc = top1(get_runtime("onnxruntime").load(art, threads=1), ctx.data.val)
    assert int8_acc >= float_acc - 6, (params, float_acc, int8_acc)


def test_vit_layernorm_and_gelu_stay_float(tmp_path):
    ctx = make_context(tmp_path, None)
    art = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(tiny_model("test_vit"), ctx)
    graph = onnx.load(str(art.path)).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms
    for norm in norms:  # LayerNorm reads a float tensor, never a freshly dequantized one of its own
        assert produced_by.get(norm.input[1]) is None or produced_by[norm.input[1]].op_type != "DequantizeLinear"
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert len(int8 & dq_inputs) >= 25  # qkv, proj, fc1, fc2 of 6 blocks + patch embedding + head


def test_keep_first_last_float_leaves_those_layers_unquantized(tmp_path):
    ctx = make_context(tmp_path, None)
    plain = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(tiny_model("test_resnet"), ctx)
    plain_size = plain.size_bytes()
    ctx2 = make_context(tmp_path / "b", None)
    kept = load_plugin("int8_static").from_params({"calibration_batches": 1, "keep_first_last_float": True}).apply(
        tiny_model("test_resnet"), ctx2)
    assert kept.size_bytes() > plain_size


def test_histogram_calibration_copes_with_a_short_last_batch(tmp_path):
    ctx = make_context(tmp_path, None)
    ctx.batch_size = 50  # 192 training images: batches of 50, 50, 50 and 42
    art = load_plugin("int8_static").from_params({"calibration": "entropy", "calibration_batches": 4}).apply(
        tiny_model("test_resnet"), ctx)
    assert art.path.exists()
