"""model.checkpoint: a file that does not fit names its keys in one line; .safetensors loads too."""

import pytest
import timm
import torch

from autocompress.config.schema import ModelConfig
from autocompress.errors import UserError
from autocompress.models import create_model


def _state(num_classes=10):
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


def _load(path, num_classes=10):
    return create_model(ModelConfig(name="test_resnet", checkpoint=path, train_epochs=0), num_classes)


def _error(path, num_classes=10) -> str:
    with pytest.raises(UserError) as err:
        _load(path, num_classes)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = {k: v for k, v in _state().items() if not k.startswith(("fc.", "bn1."))}
    state.update({"head.w": torch.zeros(3), "head.b": torch.zeros(3), "head.c": torch.zeros(3), "head.d": torch.zeros(3)})
    torch.save(state, tmp_path / "w.pth")
    assert _error(tmp_path / "w.pth") == (
        f"model.checkpoint: {tmp_path / 'w.pth'} does not fit test_resnet (10 classes): "
        "missing 7 keys (bn1.weight, bn1.bias, bn1.running_mean, ...); unexpected 4 keys (head.w, head.b, head.c, ...)")


def test_size_mismatch_names_keys_and_shapes(tmp_path):
    torch.save({"state_dict": _state(num_classes=5)}, tmp_path / "w.pth")
    assert _error(tmp_path / "w.pth") == (
        f"model.checkpoint: {tmp_path / 'w.pth'} does not fit test_resnet (10 classes): "
        "2 size mismatches, checkpoint vs model (fc.weight [5, 96] vs [10, 96], fc.bias [5] vs [10])")


def test_safetensors_and_dataparallel_checkpoints_load(tmp_path):
    from safetensors.torch import save_file

    state = _state()
    save_file(state, tmp_path / "w.safetensors")
    model = _load(tmp_path / "w.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pth")
    model = _load(tmp_path / "ddp.pth")
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


def test_bad_safetensors_files_are_one_line(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert _error(tmp_path / "junk.safetensors").startswith(
        f"model.checkpoint: {tmp_path / 'junk.safetensors'} is not a readable safetensors file: ")
    save_file({"fc.weight": torch.zeros(5, 96)}, tmp_path / "head.safetensors")
    assert "missing" in _error(tmp_path / "head.safetensors") and "fc.weight [5, 96] vs [10, 96]" in _error(
        tmp_path / "head.safetensors")
