import torch

from autocompress.testing import PluginContract, load_plugin, make_context, tiny_model


class TestChannelPrune(PluginContract):
    plugin_cls = load_plugin("channel_prune")
    params = {"ratio": 0.5}
    models = ("test_resnet", "test_efficientnet", "test_convnext")


def test_higher_ratio_removes_more(tmp_path):
    cls = load_plugin("channel_prune")
    sizes = []
    for ratio in (0.25, 0.5, 0.75):
        model = tiny_model("test_resnet")
        out = cls.from_params({"ratio": ratio}).apply(model, make_context(tmp_path, None))
        sizes.append(sum(p.numel() for p in out.parameters()))
    assert sizes[0] > sizes[1] > sizes[2]


def test_classifier_keeps_its_classes_and_channels_round(tmp_path):
    cls = load_plugin("channel_prune")
    out = cls.from_params({"ratio": 0.6, "round_to": 8}).apply(tiny_model("test_resnet"), make_context(tmp_path, None))
    assert out.get_classifier().out_features == 10
    widths = [m.out_channels for m in out.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
