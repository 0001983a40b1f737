"""The test beside the example plugin: the contract suite on five model families, and what SVD promises."""

from pathlib import Path

import torch

from autocompress.plugin.testing import FIVE_FAMILIES, PluginContract, load_plugin, make_context, tiny_model

HERE = Path(__file__).resolve().parent
SvdLowRank = load_plugin("svd_lowrank", plugins_dir=HERE)


class TestSvdLowRank(PluginContract):
    plugin_cls = SvdLowRank
    params = {"rank_ratio": 0.25}
    models = FIVE_FAMILIES


def test_a_lower_rank_keeps_fewer_parameters(tmp_path):
    sizes = []
    for ratio in (0.5, 0.25, 0.1):
        out = SvdLowRank.from_params({"rank_ratio": ratio}).apply(tiny_model("test_vit"), make_context(tmp_path, None))
        sizes.append(sum(p.numel() for p in out.parameters()))
    assert sizes[0] > sizes[1] > sizes[2]


def test_a_weight_of_lower_rank_is_reproduced_exactly(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    with torch.no_grad():  # a rank-8 weight: rank 16 loses nothing
        layer.weight.copy_(torch.randn(64, 8) @ torch.randn(8, 64) / 8)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x = torch.randn(5, 64)
    expected = model(x)
    ctx = make_context(tmp_path, None)
    lines = []
    ctx.log = lines.append
    out = SvdLowRank.from_params({"rank_ratio": 0.25}).apply(model, ctx)
    assert isinstance(out[0], torch.nn.Sequential) and out[0][0].out_features == 16
    assert isinstance(out[2], torch.nn.Linear), "the classifier stays whole"
    assert torch.allclose(out(x), expected, atol=1e-4)
    assert lines == ["svd_lowrank: 1 layers factorised, 4810 -> 2762 parameters"]
