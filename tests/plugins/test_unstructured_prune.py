import sys

import onnx
import pytest
import torch

from autocompress.models import fit
from autocompress.plugin.contract import Artefact
from autocompress.measure.runtimes import export_onnx, get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES
PLUGIN = load_plugin("unstructured_prune")
MODULE = sys.modules[PLUGIN.__module__]




class TestUnstructuredPrune(PluginContract):
    plugin_cls = PLUGIN
    params = {"sparsity": 0.8}
    models = FAMILIES


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_sparsity_is_exact_global_and_per_layer(tmp_path, name):
    ctx = make_context(tmp_path, None)
    model = PLUGIN.from_params({"sparsity": 0.7, "scope": "global"}).apply(tiny_model(name), ctx)
    weights = MODULE.prunable_weights(model, 1024)
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.7 * total)
    assert model.get_classifier().weight.ne(0).all(), "the classifier was pruned"

    model = PLUGIN.from_params({"sparsity": 0.7, "scope": "layer"}).apply(tiny_model(name), ctx)
    for w in MODULE.prunable_weights(model, 1024):
        assert int((w == 0).sum()) == round(0.7 * w.numel())


def test_masks_are_permanent_nothing_left_on_the_model(tmp_path):
    model = tiny_model("test_resnet")
    keys = set(model.state_dict())
    out = PLUGIN.from_params({"sparsity": 0.8}).apply(model, make_context(tmp_path, None))
    assert set(out.state_dict()) == keys
    assert not any("mask" in name or "orig" in name for name, _ in out.named_buffers())
    assert not any(hasattr(m, "parametrizations") or m._forward_pre_hooks for m in out.modules())


def test_zeros_survive_a_later_finetune(tmp_path):
    ctx = make_context(tmp_path, None)
    model = PLUGIN.from_params({"sparsity": 0.8}).apply(tiny_model("test_resnet"), ctx)
    weights = MODULE.prunable_weights(model, 1024)
    before = [w.detach().clone() for w in weights]
    fit(model, ctx.data, epochs=0.5, lr=1e-2, batch_size=32)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights)), "nothing was trained"
    assert all(torch.equal(w[a == 0], torch.zeros_like(w[a == 0])) for a, w in zip(before, weights))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_onnx_artefact_stores_sparse_weights_compactly_with_identical_outputs(tmp_path, name):
    ctx = make_context(tmp_path, None)
    model = PLUGIN.from_params({"sparsity": 0.9}).apply(tiny_model(name), ctx)
    runtime = get_runtime("onnxruntime")
    dense = Artefact(export_onnx(model, ctx.example_input, tmp_path / "dense.onnx"), "onnxruntime")
    compact = runtime.save(model, ctx.example_input, tmp_path / "compact.onnx")
    graph = onnx.load(str(compact.path)).graph
    assert len(graph.sparse_initializer) > 0
    onnx.checker.check_model(str(compact.path))  # int64 indices: valid ONNX, not just ORT-loadable
    assert compact.size_bytes() < 0.75 * dense.size_bytes(), (compact.size_bytes(), dense.size_bytes())
    x = ctx.data.test.example(8)
    assert torch.equal(runtime.load(compact, threads=1)(x), runtime.load(dense, threads=1)(x))
    with torch.no_grad():
        assert torch.allclose(runtime.load(compact, threads=1)(x), model(x), atol=1e-5)


def test_dense_models_are_saved_unchanged(tmp_path):
    # (test_resnet would not do: timm zero-inits the last BatchNorm of each block, and the exporter
    # folds it into all-zero conv weights, which are then rightly stored as empty sparse tensors)
    ctx = make_context(tmp_path, None)
    art = get_runtime("onnxruntime").save(tiny_model("test_vit"), ctx.example_input, tmp_path / "m.onnx")
    assert len(onnx.load(str(art.path)).graph.sparse_initializer) == 0
