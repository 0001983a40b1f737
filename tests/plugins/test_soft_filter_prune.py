import sys

import pytest
import torch

from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES
PLUGIN = load_plugin("soft_filter_prune")
MODULE = sys.modules[PLUGIN.__module__]




class TestSoftFilterPrune(PluginContract):
    plugin_cls = PLUGIN
    params = {"ratio": 0.5, "epochs": 0.3}
    models = FAMILIES


def _filters(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _zero_filters(model):
    return sum(int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum()) for m in _filters(model))


def _outputs(model):
    return sum(m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features for m in _filters(model))


@pytest.mark.parametrize("name", ["test_resnet", "mobilenetv3_small_050", "test_vit"])
def test_the_zeroed_filters_are_the_removed_ones(tmp_path, name):
    ctx = make_context(tmp_path, None)
    model = tiny_model(name)
    example = ctx.example_input[:1]
    assert _zero_filters(model) == 0
    assert MODULE.soft_prune(model, example, 0.5) > 0
    zeroed, width = _zero_filters(model), _outputs(model)
    x = ctx.data.test.example(4)
    with torch.no_grad():
        soft = model.eval()(x)
    MODULE.hard_prune(model, example, 0.5)
    assert width - _outputs(model) == zeroed, "removed a different number of filters than were zeroed"
    assert _zero_filters(model) == 0, "zeroed filters were left in the model"
    if name != "test_vit":  # BatchNorm at init maps a zero channel to zero: removing it is exact
        with torch.no_grad():
            assert torch.allclose(model(x), soft, atol=1e-5)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext"])
def test_same_widths_as_channel_prune_at_the_same_ratio(tmp_path, name):
    ctx = make_context(tmp_path, None)
    model = tiny_model(name)
    MODULE.soft_prune(model, ctx.example_input[:1], 0.4)
    MODULE.hard_prune(model, ctx.example_input[:1], 0.4)
    ref = load_plugin("channel_prune").from_params({"ratio": 0.4}).apply(tiny_model(name), ctx)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in ref.parameters()]


def test_trains_with_plain_cross_entropy_without_teacher_and_reports_each_epoch(tmp_path):
    ctx = make_context(tmp_path, None)
    curve = []
    ctx.report = lambda step, acc, final=False, last=None, whole=None: curve.append((step, acc))
    model = tiny_model("test_resnet")
    n0 = sum(p.numel() for p in model.parameters())
    out = PLUGIN.from_params({"ratio": 0.3, "epochs": 2}).apply(model, ctx)
    assert [step for step, _ in curve] == [1, 2]
    assert sum(p.numel() for p in out.parameters()) < n0
    assert _zero_filters(out) == 0
    with torch.no_grad():
        assert torch.isfinite(out(ctx.data.test.example(4))).all()


def test_the_budget_probe_takes_the_highest_ratio_and_the_shortest_schedule():
    params = PLUGIN.strongest({"ratio": {"low": 0.2, "high": 0.6}, "epochs": {"low": 1, "high": 3}})
    assert params == {"ratio": 0.6, "epochs": 1}
