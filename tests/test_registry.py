import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from autocompress.config.schema import PROJECT_ROOT
from autocompress.errors import UserError
from autocompress.plugin import shipped_plugins_dir
from autocompress.plugin.registry import contract_problem, discover
from autocompress.plugin.testing import PluginContract, forbidden_imports

EXAMPLES = PROJECT_ROOT / "docs" / "examples"

GOOD = '''
import torch
from pydantic import Field
from autocompress.plugin import Plugin, PluginConfig, Stage
from autocompress.plugin.helpers import fit

class Halve(Plugin):
    """Test plugin: zeroes the smallest ``amount`` share of every convolution's weights."""
    name = "halve_{n}"
    stage = Stage.PRUNE
    TRAIN = False
    class Config(PluginConfig):
        amount: float = Field(default=0.5, ge=0, le=1)
    search_space = {{"amount": {{"low": 0.1, "high": 0.9}}}}
    stronger = {{"amount": "high"}}
    def apply(self, model, ctx):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    flat = m.weight.view(-1)
                    flat[flat.abs().argsort()[:int(self.config.amount * flat.numel())]] = 0
        if self.TRAIN:
            fit(model, ctx, epochs=0.1, lr=1e-3, on_epoch=ctx.epoch_reporter(0.1))
        return model.cpu()
'''


def _write(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


def test_shipped_plugins_are_found():
    registry = discover()
    assert {"channel_prune", "logit_kd", "int8_static"} <= set(registry.names())
    assert registry.names("quantize") == [n for n in registry.names() if registry.get(n).stage.value == "quantize"]


def test_a_plugin_file_in_a_folder_registers_without_touching_the_core(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    registry = discover(tmp_path)
    assert "halve_a" in registry.names("prune")
    assert str((tmp_path / "halve.py").resolve()) in registry.files()


def test_unknown_plugin_lists_the_known_ones(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    with pytest.raises(UserError, match=r"unknown plugin 'halve_b' \(did you mean 'halve_a'\?\); known: .*halve_a, int8"):
        discover(tmp_path).get("halve_b")


@pytest.mark.parametrize("mutation,expected", [
    (lambda s: s.replace("PluginConfig):", "__import__('pydantic').BaseModel):"), "Config must forbid extra fields"),
    (lambda s: s.replace("amount: float = Field(default=0.5, ge=0, le=1)", "amount: float"), "Config fields need defaults: amount"),
    (lambda s: s.replace('"high": 0.9', '"high": 1.9'), "search_space.amount: 1.9 is outside what halve_a accepts"),
    (lambda s: s.replace("stage = Stage.PRUNE", "stage = 'pruning'"), "stage must be one of prune, distill, quantize"),
    (lambda s: s.replace('name = "halve_a"', 'name = "Halve A"'), "name must be a lower_snake_case string"),
    (lambda s: s + "\nraise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
    (lambda s: s.replace("    def apply", "    probe_ignores = frozenset({'amount', 'seed'})\n    def apply"),
     "probe_ignores names fields its Config lacks: seed"),
    (lambda s: s.replace('{"amount": "high"}', '{"amount": "high", "speed": "low"}'),
     "stronger names fields its Config lacks: speed"),
    (lambda s: s.replace('{"amount": "high"}', '{"amount": "up"}'), "stronger.amount is 'up'; allowed: 'high', 'low'"),
    (lambda s: s.replace("TRAIN = False", "runtimes = frozenset({'tensorrt'})"), "runtimes must be None or a non-empty"),
    (lambda s: s.replace("TRAIN = False", "fine_tunes = 'yes'"), "fine_tunes must be True or False"),
    (lambda s: s.replace("default=0.5, ge=0, le=1", "default=1.5, ge=0, le=1"), "Config default.*amount"),
    (lambda s: s.replace("TRAIN = False", "lineage = 'ratio'"), "lineage must be None or a field of its Config"),
])
def test_broken_plugins_are_rejected_when_they_register(tmp_path, mutation, expected):
    _write(tmp_path, "halve", mutation(GOOD.format(n="a")))
    with pytest.raises(UserError, match=expected):
        discover(tmp_path)


def test_two_plugins_with_one_name_clash(tmp_path):
    _write(tmp_path, "one", GOOD.format(n="a"))
    _write(tmp_path, "two", GOOD.format(n="a"))
    with pytest.raises(UserError, match="name 'halve_a' is already registered"):
        discover(tmp_path)


def test_missing_plugins_dir(tmp_path):
    with pytest.raises(UserError, match="plugins_dir: folder not found"):
        discover(tmp_path / "nope")


# -- a plugins folder adds to the shipped plugins ----------------------------------------------------

def test_a_plugins_dir_adds_to_the_shipped_plugins(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    registry = discover(tmp_path)
    assert {"halve_a", "logit_kd", "int8_static", "int8_dynamic", "channel_prune"} <= set(registry.names())
    shipped = {str(p.resolve()) for p in shipped_plugins_dir().glob("*.py")}
    assert set(registry.files()) == shipped | {str((tmp_path / "halve.py").resolve())}


def test_a_test_beside_a_plugin_is_not_loaded_as_one(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    (tmp_path / "test_halve.py").write_text("raise RuntimeError('a test file was imported as a plugin')\n")
    (tmp_path / "conftest.py").write_text("raise RuntimeError('conftest was imported as a plugin')\n")
    registry = discover(tmp_path)
    assert "halve_a" in registry
    assert not any(Path(f).name in ("test_halve.py", "conftest.py") for f in registry.files())


def test_a_name_taken_by_a_shipped_plugin_is_one_clear_line(tmp_path):
    _write(tmp_path, "mine", GOOD.format(n="a").replace('name = "halve_a"', 'name = "logit_kd"'))
    with pytest.raises(UserError, match=r"^plugin .*mine.py: name 'logit_kd' is already registered by "
                                        r".*plugins/logit_kd.py$"):
        discover(tmp_path)


def test_a_shipped_file_name_must_be_an_identical_copy(tmp_path):
    shutil.copy(shipped_plugins_dir() / "int8_static.py", tmp_path / "int8_static.py")
    registry = discover(tmp_path)  # a copy stands in for the shipped file
    assert registry.origin("int8_static") == str((tmp_path / "int8_static.py").resolve())
    assert str((shipped_plugins_dir() / "int8_static.py").resolve()) not in registry.files()
    _write(tmp_path, "int8_static", GOOD.format(n="a"))
    with pytest.raises(UserError, match=r"^plugins_dir: .*int8_static.py has the file name of the shipped plugin"):
        discover(tmp_path)


def test_a_name_taken_by_an_entry_point_is_one_clear_line(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "clash_dist-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clash-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[autocompress.plugins]\nclash = clash_plugin:Halve\n")
    (site / "clash_plugin.py").write_text(textwrap.dedent(GOOD.format(n="a")).replace('"halve_a"', '"int8_static"'))
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(UserError, match=r"^plugin .*int8_static.py: name 'int8_static' is already registered by "
                                        r"entry point clash_plugin:Halve$"):
        discover()


# -- strongest() follows each parameter's declared direction -----------------------------------------

def test_strongest_follows_the_declared_direction():
    svd = discover(EXAMPLES).get("svd_lowrank")
    assert svd.strongest({"rank_ratio": {"low": 0.1, "high": 0.5}, "min_features": [64, 16, 32]}) == {
        "rank_ratio": 0.1, "min_features": 16}
    unstructured = discover().get("unstructured_prune")
    assert unstructured.strongest({"sparsity": {"low": 0.7, "high": 0.9}, "prune_classifier": [False, True],
                                   "scope": ["layer", "global"]}) == {
        "sparsity": 0.9, "prune_classifier": True, "scope": "layer"}  # 'any': the first choice
    student = discover().get("student_kd")
    assert student.strongest({"student": ["resnet10t", "mobilenetv3_small_050"]})["student"] == "mobilenetv3_small_050"


def test_the_search_spaces_budget_probe_takes_the_lowest_rank():
    from autocompress.search.space import parse_search_space

    registry = discover(EXAMPLES)
    space = parse_search_space({"prune": {"none": {}, "svd_lowrank": {"rank_ratio": {"low": 0.2, "high": 0.6}}},
                                "quantize": {"int8_dynamic": {}}}, registry, "onnxruntime")
    chosen = space.strongest(registry)
    assert chosen["prune"] == ("svd_lowrank", {"rank_ratio": 0.2})
    assert chosen["quantize"][0] == "int8_dynamic" and chosen["quantize"][1]["ops"] == "matmul_conv"


# -- every check of the contract suite can fail ------------------------------------------------------

def _load(tmp_path: Path, text: str, stem: str = "halve"):
    """The plugin class of a file, loaded without registering it (so a broken one gets this far)."""
    path = tmp_path / f"{stem}.py"
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location(f"contract_check_{stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Halve


def _contract(cls, **attrs) -> PluginContract:
    return type("Contract", (PluginContract,), {"plugin_cls": cls, **attrs})()


def _run(check: PluginContract, name: str, tmp_path: Path) -> None:
    method = getattr(check, name)
    if "tmp_path" in method.__code__.co_varnames:
        method(tmp_path)
    else:
        method()


CHECKS = sorted(n for n in dir(PluginContract) if n.startswith("test_"))

BROKEN = [
    ("test_meets_the_contract", lambda s: s.replace('name = "halve_a"', 'name = "Halve A"'), {},
     "name must be a lower_snake_case string"),
    ("test_imports_only_the_contract_and_helpers",
     lambda s: s.replace("import torch\n", "import torch\nfrom autocompress.models import fit as _fit\n", 1), {},
     "imports line 3: autocompress.models"),
    ("test_imports_only_the_contract_and_helpers",
     lambda s: s.replace("    def apply(self, model, ctx):\n",
                         "    def apply(self, model, ctx):\n        import autocompress.measure.runtimes\n"), {},
     "autocompress.measure.runtimes"),
    ("test_config_rejects_unknown_fields",
     lambda s: s.replace("amount: float", "model_config = {'extra': 'ignore'}\n        amount: float"), {},
     "DID NOT RAISE"),
    ("test_config_defaults_meet_their_bounds", lambda s: s.replace("default=0.5, ge=0", "default=1.5, ge=0"), {},
     "Config default.*amount"),
    ("test_default_search_space_is_valid_and_directed", lambda s: s.replace('{"amount": "high"}', "{}"), {},
     r"stronger lacks the searched parameter\(s\) amount"),
    ("test_default_search_space_is_valid_and_directed",
     lambda s: s.replace("    def apply", "    @classmethod\n    def strongest(cls, space):\n"
                                        "        return {'amount': 2.0}\n    def apply"), {}, "strongest"),
    ("test_params_are_valid", lambda s: s, {"params": {"amout": 0.3}}, "params names fields .* lacks: amout"),
    ("test_params_are_valid", lambda s: s, {"params": {"amount": 3.0}}, "params.*amount"),
    ("test_apply_on_each_model", lambda s: s.replace("TRAIN = False", "TRAIN = True"), {},
     "optimizer steps but does not declare fine_tunes = True"),
    ("test_apply_on_each_model",
     lambda s: s.replace("TRAIN = False", "TRAIN = True\n    fine_tunes = True").replace(
         ", on_epoch=ctx.epoch_reporter(0.1)", ""), {}, "trained but reported no epoch"),
    ("test_apply_on_each_model", lambda s: s.replace("flat[flat.abs()", "flat.clone()[flat.abs()"), {},
     "pruning left"),
    ("test_structure_probe_trains_nothing",
     lambda s: s.replace("TRAIN = False", "TRAIN = True\n    fine_tunes = True"), {},
     "optimizer steps with ctx.structure_only"),
]


def test_a_sound_plugin_passes_every_check(tmp_path):
    good = _contract(_load(tmp_path, GOOD.format(n="a")))
    for name in CHECKS:
        _run(good, name, tmp_path / name)
    trainer = _load(tmp_path, GOOD.format(n="a").replace("TRAIN = False", "TRAIN = True\n    fine_tunes = True")
                    .replace("if self.TRAIN:", "if self.TRAIN and not ctx.structure_only:"), stem="trainer")
    _run(_contract(trainer), "test_apply_on_each_model", tmp_path / "trainer")
    _run(_contract(trainer), "test_structure_probe_trains_nothing", tmp_path / "trainer-probe")


def test_every_check_is_exercised_by_a_broken_plugin():
    assert sorted({name for name, *_ in BROKEN}) == CHECKS


@pytest.mark.parametrize("check,mutation,attrs,expected", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_each_contract_check_fails_a_broken_plugin(tmp_path, check, mutation, attrs, expected):
    cls = _load(tmp_path, mutation(GOOD.format(n="a")))
    with pytest.raises((AssertionError, pytest.fail.Exception), match=expected):
        _run(_contract(cls, **attrs), check, tmp_path / "work")


def test_the_import_check_reads_every_form_of_import(tmp_path):
    path = tmp_path / "p.py"
    path.write_text("import autocompress\nfrom autocompress import plugin, models\nfrom autocompress.plugin import "
                    "helpers, Plugin\nimport importlib\nimportlib.import_module('autocompress.data')\n"
                    "from autocompress.plugin.helpers import fit\nimport torch\n")
    assert forbidden_imports(path) == ["line 1: autocompress", "line 2: autocompress.models",
                                       "line 5: autocompress.data"]


def test_the_shipped_plugins_import_only_the_contract_and_helpers():
    for path in sorted(shipped_plugins_dir().glob("*.py")):
        assert forbidden_imports(path) == [], path
    assert contract_problem(discover(EXAMPLES).get("svd_lowrank")) is None
