"""NNCF int8 for OpenVINO: the plugin contract, composition after pruning, accuracy-aware mode."""

import copy

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from autocompress.measure.accuracy import module_predictor, top1  # noqa: E402
from autocompress.models import fit  # noqa: E402
from autocompress.measure.runtimes import get_runtime  # noqa: E402
from autocompress.plugin.testing import PluginContract, load_plugin, make_context, tiny_model  # noqa: E402


class TestNncfInt8(PluginContract):
    plugin_cls = load_plugin("nncf_int8")
    params = {"subset_size": 32}
    models = ("test_resnet", "test_vit", "mobilenetv3_small_050")
    runtime = "openvino"


def _fake_quantize_count(art) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(art.path)).get_ordered_ops())


def test_after_channel_prune(tmp_path):
    ctx = make_context(tmp_path, None, runtime="openvino")
    pruned = load_plugin("channel_prune").from_params({"ratio": 0.5}).apply(tiny_model("test_resnet"), ctx)
    params = sum(p.numel() for p in pruned.parameters())
    art = load_plugin("nncf_int8").from_params({"subset_size": 32, "ignore_first_last": True}).apply(pruned, ctx)
    assert art.runtime == "openvino" and art.precision == "int8" and all(f.is_file() for f in art.files)
    weights = art.path.with_suffix(".bin").stat().st_size  # the .xml is the graph, a large share at this size
    assert weights < 1.25 * params, "the int8 IR should store about a byte per (pruned) parameter"
    assert _fake_quantize_count(art) > 0
    logits = get_runtime("openvino").load(art, threads=1)(ctx.data.test.example(3))
    assert logits.shape == (3, 10)


def test_accuracy_aware_mode_keeps_the_drop_within_the_limit(tmp_path):
    ctx = make_context(tmp_path, None, runtime="openvino")
    model = fit(tiny_model("test_resnet"), ctx.data, epochs=8, lr=3e-3, batch_size=32)
    runtime = get_runtime("openvino")
    base = top1(module_predictor(model), ctx.data.val)  # = the fp32 IR's (tests/test_openvino.py)
    cls = load_plugin("nncf_int8")
    plain = cls.from_params({"subset_size": 16}).apply(copy.deepcopy(model), make_context(tmp_path / "p", None))
    plain_acc = top1(runtime.load(plain, threads=1), ctx.data.val)
    limit = 0.5
    aware = cls.from_params({"subset_size": 16, "accuracy_control": True, "max_drop_pp": limit}).apply(
        copy.deepcopy(model), make_context(tmp_path / "a", None))
    aware_acc = top1(runtime.load(aware, threads=1), ctx.data.val)
    assert base - aware_acc <= limit + 1e-6, f"fp32 {base:.2f}%, accuracy-aware int8 {aware_acc:.2f}%"
    if base - plain_acc > limit:  # some layers had to go back to float
        assert _fake_quantize_count(aware) < _fake_quantize_count(plain)
        assert aware.size_bytes() > plain.size_bytes()
