"""channel_prune -> logit_kd -> int8_static on each family, as a trial chains them."""

import copy

import pytest
import torch

from autocompress.plugin.contract import Artefact
from autocompress.measure.runtimes import get_runtime
from autocompress.plugin.testing import FIVE_FAMILIES, load_plugin, make_context, tiny_model

FAMILIES = FIVE_FAMILIES




@pytest.mark.parametrize("name", FAMILIES)
def test_prune_distill_quantize_chain_loads_and_runs(tmp_path, name):
    model = tiny_model(name)
    ctx = make_context(tmp_path, teacher=copy.deepcopy(model))
    n0 = sum(p.numel() for p in model.parameters())
    steps = [("channel_prune", {"ratio": 0.5}), ("logit_kd", {"epochs": 0.25}), ("int8_static", {"calibration_batches": 1})]
    result = model
    for plugin, params in steps:
        assert not isinstance(result, Artefact)
        result = load_plugin(plugin).from_params(params).apply(result, ctx)
        if isinstance(result, torch.nn.Module):
            assert sum(p.numel() for p in result.parameters()) < n0
    assert isinstance(result, Artefact) and result.precision == "int8"
    logits = get_runtime("onnxruntime").load(result, threads=1)(ctx.data.test.example(4))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
