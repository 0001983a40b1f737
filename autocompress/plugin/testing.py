"""A reusable contract test suite for plugins (needs pytest).

A plugin's test subclasses :class:`PluginContract` and names the class::

    from autocompress.plugin.testing import PluginContract, load_plugin

    class TestMyPrune(PluginContract):
        plugin_cls = load_plugin("my_prune")      # or import the class
        params = {"ratio": 0.5}                   # what apply() is exercised with
        models = ("test_resnet", "test_vit")      # timm models it must work on

Every test builds tiny models and a small slice of the embedded digits data, so the suite
runs in seconds per model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from autocompress.config import DataConfig, ModelConfig
from autocompress.data import load_data
from autocompress.models import create_model
from autocompress.plugin.contract import Artefact, Plugin, Stage, TrialContext
from autocompress.plugin.registry import contract_problem, discover
from autocompress.measure import get_runtime
from autocompress.plugin.space import check_plugin_space

TINY_DATA = DataConfig(source="digits", max_samples=240, batch_size=32)
FIVE_FAMILIES = ("test_resnet", "mobilenetv3_small_050", "test_efficientnet", "test_convnext", "test_vit")
"""Small timm models of the five families every plugin must handle: ResNet, MobileNetV3, EfficientNet, ConvNeXt, ViT."""


def load_plugin(name: str, plugins_dir: Path | str | None = None) -> type[Plugin]:
    """A plugin class by name, from entry points and the (default) plugins folder."""
    return discover(plugins_dir).get(name)


def make_context(tmp_path: Path, teacher: torch.nn.Module | None, runtime: str = "onnxruntime",
                 img_size: int = 32) -> TrialContext:
    """A small, real trial context: digits data, a teacher, a work folder."""
    data = load_data(TINY_DATA, img_size)
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    return TrialContext(data=data, teacher=teacher, device=torch.device("cpu"), runtime=runtime,
                        example_input=data.train.example(1), workdir=Path(tmp_path), seed=0, batch_size=32,
                        threads=1)


def tiny_model(name: str, img_size: int = 32) -> torch.nn.Module:
    """A timm model with 10 classes at ``img_size``, random weights."""
    torch.manual_seed(0)
    return create_model(ModelConfig(name=name, img_size=img_size, train_epochs=0), 10).eval()


class PluginContract:
    """Tests every plugin must pass. Subclass and set ``plugin_cls``."""

    plugin_cls: ClassVar[type[Plugin]]
    params: ClassVar[dict[str, Any]] = {}
    models: ClassVar[tuple[str, ...]] = ("test_resnet",)
    runtime: ClassVar[str] = "onnxruntime"

    def _plugin(self) -> Plugin:
        return self.plugin_cls.from_params(self.params)

    def test_meets_the_contract(self):
        assert contract_problem(self.plugin_cls) is None

    def test_config_rejects_unknown_fields(self):
        from pydantic import ValidationError

        with pytest.raises(ValidationError):
            self.plugin_cls.Config.model_validate({"no_such_parameter_xyz": 1})

    def test_default_search_space_is_valid(self):
        space = check_plugin_space(self.plugin_cls, self.plugin_cls.search_space, "search_space")
        self.plugin_cls.Config.model_validate(self.plugin_cls.strongest(space))

    def test_params_are_valid(self):
        assert isinstance(self._plugin().config, self.plugin_cls.Config)


    def _apply(self, name: str, tmp_path: Path):
        model = tiny_model(name)
        before = copy.deepcopy(model)
        ctx = make_context(tmp_path, teacher=copy.deepcopy(model), runtime=self.runtime)
        out = self._plugin().apply(model, ctx)
        return before, out, ctx

    def test_apply_on_each_model(self, tmp_path):
        for name in self.models:
            before, out, ctx = self._apply(name, tmp_path / name.replace("/", "_"))
            example = ctx.data.test.example(4)
            if isinstance(out, Artefact):
                assert self.plugin_cls.stage == Stage.QUANTIZE, "only quantize plugins may return an artefact"
                assert out.path.exists()
                logits = get_runtime(out.runtime).load(out, threads=1)(example)
                float_art = get_runtime(out.runtime).save(before, ctx.example_input, tmp_path / f"{name}.float{get_runtime(out.runtime).suffix}")
                assert out.size_bytes() < float_art.size_bytes(), f"{name}: quantized artefact is not smaller"
            else:
                assert isinstance(out, torch.nn.Module)
                with torch.no_grad():
                    logits = out.eval()(example)
                self._check_module(name, before, out)
            assert logits.shape == (4, 10), f"{name}: output shape {tuple(logits.shape)}"
            assert torch.isfinite(torch.as_tensor(logits)).all(), f"{name}: non-finite outputs"

    def _check_module(self, name: str, before: torch.nn.Module, after: torch.nn.Module) -> None:
        n0 = sum(p.numel() for p in before.parameters())
        n1 = sum(p.numel() for p in after.parameters())
        if self.plugin_cls.stage == Stage.PRUNE and self.plugin_cls.changes_structure:
            # non-zero parameters: structured pruning removes them, unstructured pruning zeroes them
            nz0, nz1 = (sum(int(torch.count_nonzero(p)) for p in m.parameters()) for m in (before, after))
            assert nz1 < nz0, f"{name}: pruning left {nz1} of {nz0} non-zero parameters"
        if self.plugin_cls.stage == Stage.DISTILL and n1 == n0:
            changed = any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
            assert changed, f"{name}: distillation did not change any weight"
