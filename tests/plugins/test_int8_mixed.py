import onnx
import torch

from autocompress.measure.runtimes import export_onnx
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES
ALL = {f"stage{i}": "int8" for i in range(5)}


class TestInt8Mixed(PluginContract):
    plugin_cls = load_plugin("int8_mixed")
    params = {"calibration_batches": 1}
    models = FAMILIES


def test_nodes_map_to_all_five_stages(tmp_path):
    mixed = __import__("sys").modules[load_plugin("int8_mixed").__module__]
    for name in ("test_resnet", "test_vit"):
        model = tiny_model(name)
        graph = onnx.load(str(export_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / f"{name}.onnx"))).graph
        stages = mixed.node_stages(graph, model)
        compute = [n for n in graph.node if n.op_type in {"Conv", "Gemm", "MatMul"}]
        assert {stages[n.name] for n in compute} == {0, 1, 2, 3, 4}, name
        assert stages[compute[0].name] == 0 and stages[compute[-1].name] == 4
        order = [stages[n.name] for n in compute]
        assert order == sorted(order), f"{name}: stages are not consecutive"


def test_all_float_is_fp32_size_all_int8_matches_static_and_mixed_lies_between(tmp_path):
    model = tiny_model("test_resnet")
    plugin = load_plugin("int8_mixed")

    def size(params, sub, cls=plugin):
        ctx = make_context(tmp_path / sub, None)
        return cls.from_params({"calibration_batches": 1, **params}).apply(__import__("copy").deepcopy(model), ctx)

    all_float = size({k: "float" for k in ALL}, "float")
    all_int8 = size(ALL, "int8")
    static = size({}, "static", load_plugin("int8_static"))
    mixed = size({**ALL, "stage3": "float", "stage4": "float"}, "mixed")
    export_size = export_onnx(model, make_context(tmp_path / "e", None).example_input, tmp_path / "e.onnx").stat().st_size
    assert all_float.precision == "fp32" and abs(all_float.size_bytes() / export_size - 1) < 0.05
    assert all_int8.precision == "int8" and abs(all_int8.size_bytes() / static.size_bytes() - 1) < 0.05
    assert mixed.precision == "mixed" and all_int8.size_bytes() < mixed.size_bytes() < all_float.size_bytes()
    assert all_int8.size_bytes() < export_size / 2
    graph = onnx.load(str(mixed.path)).graph
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert any(n.op_type == "Conv" for n in graph.node) and any(n.op_type == "DequantizeLinear" for n in graph.node)
