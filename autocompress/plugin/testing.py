"""A reusable contract test suite for plugins (needs pytest): one plugin file + one test file.

A plugin's test subclasses :class:`PluginContract` and names the class::

    from autocompress.plugin.testing import PluginContract, load_plugin

    class TestMyPrune(PluginContract):
        plugin_cls = load_plugin("my_prune", plugins_dir=Path(__file__).parent)  # or import the class
        params = {"ratio": 0.5}                   # what apply() is exercised with
        models = ("test_resnet", "test_vit")      # timm models it must work on

Every test builds tiny models and a small slice of the embedded digits data, so the suite
runs in seconds per model. What it checks: the class meets the registration contract; its file
imports no autocompress module besides :mod:`autocompress.plugin` and
:mod:`autocompress.plugin.helpers`; its ``Config`` forbids unknown fields and its defaults meet its
own bounds; its default ``search_space`` fits the ``Config`` and every searched parameter has a
direction in ``stronger``; ``apply`` works on each model; a plugin that trains declares
``fine_tunes`` and reports its curve; and nothing trains in a structure probe.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest
import torch
from pydantic import ValidationError

from autocompress.config import DataConfig, ModelConfig
from autocompress.data import load_data
from autocompress.errors import describe_validation_error
from autocompress.measure import get_runtime
from autocompress.models import create_model
from autocompress.plugin.contract import Artefact, Plugin, Stage, TrialContext
from autocompress.plugin.registry import contract_problem, discover
from autocompress.plugin.space import check_plugin_space

ALLOWED_IMPORTS = frozenset({"autocompress.plugin", "autocompress.plugin.helpers"})
"""The autocompress modules a plugin file may import: the contract and the helpers."""

TINY_DATA = DataConfig(source="digits", max_samples=240, batch_size=32)
FIVE_FAMILIES = ("test_resnet", "mobilenetv3_small_050", "test_efficientnet", "test_convnext", "test_vit")
"""Small timm models of the five families every plugin must handle: ResNet, MobileNetV3, EfficientNet, ConvNeXt, ViT."""


def load_plugin(name: str, plugins_dir: Path | str | None = None) -> type[Plugin]:
    """A plugin class by name, from entry points, the shipped plugins and ``plugins_dir`` (added to them)."""
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


def forbidden_imports(path: Path | str) -> list[str]:
    """The imports of autocompress modules in a plugin file other than :data:`ALLOWED_IMPORTS`.

    Reads the file's syntax tree (every ``import`` and ``from ... import``, in functions too, and
    ``importlib.import_module`` / ``__import__`` calls with a literal name); returns one
    ``line N: module`` entry per offending import.
    """
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "autocompress.plugin":  # ``from autocompress.plugin import helpers`` is the helpers
                found += [(node.lineno, f"autocompress.plugin.{a.name}" if a.name == "helpers" else node.module)
                          for a in node.names]
            elif node.module == "autocompress":  # ``from autocompress import plugin`` names a module
                found += [(node.lineno, f"autocompress.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return [f"line {line}: {module}" for line, module in sorted(found)
            if (module == "autocompress" or module.startswith("autocompress.")) and module not in ALLOWED_IMPORTS]


def searched_parameters(space: dict[str, Any]) -> list[str]:
    """Parameters a space lets the search vary (a range, or more than one choice)."""
    out = []
    for key, spec in space.items():
        if isinstance(spec, dict) and ("low" in spec or len(spec.get("choices", ())) > 1):
            out.append(key)
    return out


@contextlib.contextmanager
def optimizer_steps() -> Iterator[list[int]]:
    """Counts the optimizer steps any torch optimizer takes in the body (``counter[0]``)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    counter = [0]

    def count(optimizer, args, kwargs) -> None:
        counter[0] += 1

    handle = register_optimizer_step_post_hook(count)
    try:
        yield counter
    finally:
        handle.remove()


class PluginContract:
    """Tests every plugin must pass. Subclass and set ``plugin_cls``.

    Attributes:
        plugin_cls: The plugin class under test.
        params: Parameters ``apply`` is exercised with (set them so a plugin that can train does).
        models: timm models it must work on (see :data:`FIVE_FAMILIES`).
        runtime: The trial's runtime in the context.
    """

    plugin_cls: ClassVar[type[Plugin]]
    params: ClassVar[dict[str, Any]] = {}
    models: ClassVar[tuple[str, ...]] = ("test_resnet",)
    runtime: ClassVar[str] = "onnxruntime"

    def _plugin(self) -> Plugin:
        return self.plugin_cls.from_params(self.params)

    def test_meets_the_contract(self):
        problem = contract_problem(self.plugin_cls)
        assert problem is None, problem

    def test_imports_only_the_contract_and_helpers(self):
        source = inspect.getsourcefile(self.plugin_cls)
        assert source is not None, f"{self.plugin_cls.__name__}: no source file to check"
        bad = forbidden_imports(source)
        assert not bad, (f"{source} imports {'; '.join(bad)}: a plugin imports only autocompress.plugin and "
                         "autocompress.plugin.helpers")

    def test_config_rejects_unknown_fields(self):
        with pytest.raises(ValidationError):
            self.plugin_cls.Config.model_validate({"no_such_parameter_xyz": 1})

    def test_config_defaults_meet_their_bounds(self):
        config = self.plugin_cls.Config
        try:
            config.model_validate(config().model_dump())
        except ValidationError as err:
            pytest.fail(describe_validation_error(err, config, prefix=f"{self.plugin_cls.__name__}.Config default"))

    def test_default_search_space_is_valid_and_directed(self):
        space = check_plugin_space(self.plugin_cls, self.plugin_cls.search_space, "search_space")
        undirected = [k for k in searched_parameters(space) if k not in self.plugin_cls.stronger]
        assert not undirected, (f"{self.plugin_cls.__name__}.stronger lacks the searched parameter(s) "
                                f"{', '.join(undirected)}: say which values compress more ('high', 'low', 'any' "
                                "or a list, most compressing first)")
        strongest = self.plugin_cls.strongest(space)
        assert set(strongest) == set(space), f"strongest() returned {sorted(strongest)} for {sorted(space)}"
        try:
            self.plugin_cls.Config.model_validate(strongest)
        except ValidationError as err:
            pytest.fail(describe_validation_error(err, self.plugin_cls.Config, prefix="strongest()"))

    def test_params_are_valid(self):
        config = self.plugin_cls.Config
        unknown = sorted(set(self.params) - set(config.model_fields))
        assert not unknown, f"params names fields {self.plugin_cls.__name__}.Config lacks: {', '.join(unknown)}"
        try:
            config.model_validate(self.params)
        except ValidationError as err:
            pytest.fail(describe_validation_error(err, config, prefix="params"))

    def _apply(self, name: str, tmp_path: Path, structure_only: bool = False):
        model = tiny_model(name)
        before = copy.deepcopy(model)
        ctx = make_context(tmp_path, teacher=copy.deepcopy(model), runtime=self.runtime)
        ctx.structure_only = structure_only
        reports: list = []
        ctx.report = lambda step, acc, final=False, last=None, whole=None: reports.append((step, acc, final))
        with optimizer_steps() as steps:
            out = self._plugin().apply(model, ctx)
        return before, out, ctx, steps[0], reports

    def test_apply_on_each_model(self, tmp_path):
        for name in self.models:
            before, out, ctx, steps, reports = self._apply(name, tmp_path / name.replace("/", "_"))
            if steps:
                assert self.plugin_cls.fine_tunes and self.plugin_cls.trains(self.params), (
                    f"{name}: {self.plugin_cls.__name__} took {steps} optimizer steps but does not declare "
                    "fine_tunes = True, or its trains() says this configuration does not train (its training "
                    "would get no curve, early stop or cache)")
                assert reports, f"{name}: {self.plugin_cls.__name__} trained but reported no epoch through ctx.report"
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

    def test_structure_probe_trains_nothing(self, tmp_path):
        name = self.models[0]
        _, out, _, steps, _ = self._apply(name, tmp_path / "probe", structure_only=True)
        assert steps == 0, f"{name}: {steps} optimizer steps with ctx.structure_only (a probe measures only latency and size)"
        assert isinstance(out, (torch.nn.Module, Artefact)), f"{name}: apply returned {type(out).__name__}"

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
