import pytest
import torch

pytest.importorskip("torchao")

from autocompress.measure.runtimes import get_runtime  # noqa: E402
from autocompress.plugin.testing import PluginContract, load_plugin, make_context, tiny_model  # noqa: E402


class TestInt8PT2E(PluginContract):
    """Loading compiles with inductor (10-50 s per model here), so the contract runs on a conv net and
    a ViT; the other families are exercised by the slow test below."""

    plugin_cls = load_plugin("int8_pt2e")
    params = {"calibration_batches": 1}
    models = ("test_resnet", "test_vit")
    runtime = "torch"


@pytest.mark.slow
class TestInt8PT2EOtherFamilies(TestInt8PT2E):
    models = ("test_efficientnet", "test_convnext", "mobilenetv3_small_050")


def test_resnet18_program_stores_int8_weights_without_the_fp32_copies(tmp_path):
    ctx = make_context(tmp_path, None, runtime="torch")
    model = tiny_model("resnet18")
    for m in model.modules():  # away from timm's zero-init BatchNorm scales, like a trained model
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    fp32 = get_runtime("torch").save(model, ctx.example_input, tmp_path / "fp32.pt2")
    art = load_plugin("int8_pt2e").from_params({"calibration_batches": 1}).apply(model, ctx)
    assert art.precision == "int8" and art.runtime == "torch"
    program = torch.export.load(str(art.path))
    tensors = {**program.state_dict, **program.constants}
    int8 = [t for t in tensors.values() if t.dtype == torch.int8]
    assert len(int8) >= 20
    assert sum(t.numel() for t in tensors.values() if t.dtype == torch.float32) < 0.05 * sum(t.numel() for t in int8)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("dequantize_per_channel" in t for t in targets) and any("quantize_per_tensor" in t for t in targets)
    assert fp32.size_bytes() / art.size_bytes() > 3.5
