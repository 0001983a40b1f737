import copy

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autocompress.measure.accuracy import module_predictor, top1
from autocompress.models import fit
from autocompress.measure.runtimes import export_onnx, get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES


class TestInt8QAT(PluginContract):
    plugin_cls = load_plugin("int8_qat")
    params = {"epochs": 0.1, "calibration_batches": 1}
    models = FAMILIES


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_trained_weights_lie_on_the_int8_grid_so_ort_weight_quantization_is_lossless(name, tmp_path):
    ctx = make_context(tmp_path, None)
    model = tiny_model(name)
    art = load_plugin("int8_qat").from_params({"epochs": 0.1, "calibration_batches": 1}).apply(model, ctx)
    # `model` now holds the fine-tuned weights, rounded to the grid; its float export is what ORT quantized
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(
        export_onnx(model, ctx.example_input, tmp_path / "check.onnx"))).graph.initializer}
    graph = onnx.load(str(art.path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    compared = 0
    for node in graph.node:
        weight = inits.get(node.input[0])
        if node.op_type != "DequantizeLinear" or weight is None or weight.dtype != np.int8:
            continue
        scale = inits[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        ref = floats.get(node.input[0].replace("_quantized", ""))
        if ref is not None and ref.shape == weight.shape:
            deq = weight.astype(np.float32) * scale.reshape(shape)
            assert np.abs(deq - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-12, node.input[0]
            compared += 1
    assert compared >= 10


def test_qat_accuracy_is_not_much_worse_than_ptq(tmp_path):
    ctx = make_context(tmp_path, None)
    model = fit(tiny_model("test_resnet"), ctx.data, epochs=6, lr=1e-2)
    float_acc = top1(module_predictor(model), ctx.data.val)
    runtime = get_runtime("onnxruntime")
    ptq = load_plugin("int8_static").from_params({"calibration_batches": 2}).apply(copy.deepcopy(model), ctx)
    ptq_acc = top1(runtime.load(ptq, threads=1), ctx.data.val)
    curve = []
    ctx.report = lambda step, acc, final=False, last=None, whole=None: curve.append(acc)
    ctx.teacher = copy.deepcopy(model)
    qat_ctx = make_context(tmp_path / "qat", ctx.teacher)
    qat_ctx.report = ctx.report
    qat = load_plugin("int8_qat").from_params({"epochs": 1, "lr": 3e-4, "calibration_batches": 2}).apply(model, qat_ctx)
    qat_acc = top1(runtime.load(qat, threads=1), ctx.data.val)
    assert len(curve) == 1
    assert qat_acc >= ptq_acc - 5, (float_acc, ptq_acc, qat_acc)
    assert qat_acc >= float_acc - 8, (float_acc, ptq_acc, qat_acc)
