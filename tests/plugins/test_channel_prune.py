import copy

import pytest
import torch

from autocompress.measure.runtimes import get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES




class TestChannelPrune(PluginContract):
    plugin_cls = load_plugin("channel_prune")
    params = {"ratio": 0.5, "iterative_steps": 2, "finetune_epochs": 0.2}  # trains between the steps
    models = FAMILIES


def test_fine_tunes_between_steps_report_one_curve(tmp_path):
    ctx = make_context(tmp_path, None)
    curve = []
    ctx.report = lambda step, acc, final=False, last=None, whole=None: curve.append((step, final, last))
    load_plugin("channel_prune").from_params({"ratio": 0.5, "iterative_steps": 3, "finetune_epochs": 0.5}).apply(
        tiny_model("test_resnet"), ctx)
    assert curve == [(1, False, 2), (2, True, 2)]


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_higher_ratio_removes_more(tmp_path):
    cls = load_plugin("channel_prune")
    sizes = []
    for ratio in (0.25, 0.5, 0.75):
        model = tiny_model("test_resnet")
        out = cls.from_params({"ratio": ratio}).apply(model, make_context(tmp_path, None))
        sizes.append(_params(out))
    assert sizes[0] > sizes[1] > sizes[2]


def test_classifier_keeps_its_classes_and_channels_round(tmp_path):
    cls = load_plugin("channel_prune")
    out = cls.from_params({"ratio": 0.6, "round_to": 8}).apply(tiny_model("test_resnet"), make_context(tmp_path, None))
    assert out.get_classifier().out_features == 10
    widths = [m.out_channels for m in out.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


CASES = [("test_resnet", imp) for imp in ("l1", "l2", "bn_scale", "lamp", "taylor")] + [
    ("test_vit", "bn_scale"), ("test_vit", "taylor"), ("test_convnext", "bn_scale")]


@pytest.mark.parametrize("name,importance", CASES)
def test_every_importance_prunes_and_runs(tmp_path, name, importance):
    cls = load_plugin("channel_prune")
    model = tiny_model(name)
    n0 = _params(model)
    ctx = make_context(tmp_path, None)
    out = cls.from_params({"ratio": 0.5, "importance": importance}).apply(model, ctx)
    assert _params(out) < n0
    assert not any(p.grad is not None for p in out.parameters()), "taylor gradients left on the model"
    with torch.no_grad():
        logits = out(ctx.data.test.example(4))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    if importance == "taylor":
        l2 = cls.from_params({"ratio": 0.5, "importance": "l2"}).apply(tiny_model(name), ctx)
        flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
        assert flat(out).shape == flat(l2).shape
        assert not torch.equal(flat(out), flat(l2)), "taylor kept the same channels as l2: gradients unused?"


@pytest.mark.parametrize("attention", ["head_dims", "heads"])
def test_vit_attention_sizes_follow_the_pruned_qkv_and_export(tmp_path, attention):
    cls = load_plugin("channel_prune")
    ctx = make_context(tmp_path, None)
    out = cls.from_params({"ratio": 0.5, "attention": attention}).apply(tiny_model("test_vit"), ctx)
    for block in out.blocks:
        attn = block.attn
        assert attn.num_heads * attn.head_dim == attn.attn_dim == attn.qkv.out_features // 3 == attn.proj.in_features
        assert attn.scale == pytest.approx(attn.head_dim ** -0.5)
        if attention == "head_dims":
            assert attn.num_heads == 2 and attn.head_dim == 16 and attn.head_dim % 8 == 0
        else:
            assert attn.num_heads == 1 and attn.head_dim == 32
    assert out.embed_dim == 64 and out.blocks[0].norm1.normalized_shape == (32,)
    x = ctx.data.test.example(4)
    with torch.no_grad():
        fused = out(x)
        for block in out.blocks:
            block.attn.fused_attn = False
        unfused = out(x)
    assert torch.allclose(fused, unfused, atol=1e-5)
    if attention == "head_dims":
        _same_in_onnxruntime(out, ctx, tmp_path / "vit.onnx")


def test_mobilenetv3_depthwise_and_se_stay_consistent(tmp_path):
    # ONNX export of every pruned family is covered by test_compose.py
    cls = load_plugin("channel_prune")
    ctx = make_context(tmp_path, None)
    model = tiny_model("mobilenetv3_small_050")
    n0 = _params(model)
    out = cls.from_params({"ratio": 0.5}).apply(model, ctx)
    assert _params(out) < 0.5 * n0
    depthwise = [m for m in out.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    for se in (m for m in out.modules() if hasattr(m, "conv_reduce") and hasattr(m, "conv_expand")):
        assert se.conv_reduce.out_channels == se.conv_expand.in_channels


def test_iterative_steps_with_finetune_reach_the_ratio(tmp_path):
    cls = load_plugin("channel_prune")
    ctx = make_context(tmp_path, None)
    one = cls.from_params({"ratio": 0.5}).apply(tiny_model("test_vit"), ctx)
    model = tiny_model("test_vit")
    before = copy.deepcopy(model)
    steps = cls.from_params({"ratio": 0.5, "iterative_steps": 2, "finetune_epochs": 0.25}).apply(model, ctx)
    assert _params(steps) == _params(one)
    assert steps.blocks[0].attn.head_dim == one.blocks[0].attn.head_dim
    assert not torch.equal(steps.head.bias, before.head.bias), "no fine-tuning happened between the steps"
    with torch.no_grad():
        assert torch.isfinite(steps(ctx.data.test.example(2))).all()


def _same_in_onnxruntime(model, ctx, path):
    runtime = get_runtime("onnxruntime")
    predict = runtime.load(runtime.save(model, ctx.example_input, path), threads=1)
    x = ctx.data.test.example(4)
    with torch.no_grad():
        expected = model.eval()(x)
    assert torch.allclose(predict(x), expected, atol=1e-4)
