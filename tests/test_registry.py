import textwrap

import pytest

from autocompress.errors import UserError
from autocompress.plugin.registry import discover

GOOD = '''
from pydantic import Field
from autocompress import Plugin, PluginConfig, Stage

class Halve(Plugin):
    """Test plugin."""
    name = "halve_{n}"
    stage = Stage.PRUNE
    class Config(PluginConfig):
        amount: float = Field(default=0.5, ge=0, le=1)
    search_space = {{"amount": {{"low": 0.1, "high": 0.9}}}}
    def apply(self, model, ctx):
        return model
'''


def _write(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


def test_project_plugins_are_found():
    registry = discover()
    assert {"channel_prune", "logit_kd", "int8_static"} <= set(registry.names())
    assert registry.names("quantize") == [n for n in registry.names() if registry.get(n).stage.value == "quantize"]


def test_a_plugin_file_in_a_folder_registers_without_touching_the_core(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    registry = discover(tmp_path)
    assert "halve_a" in registry.names("prune")
    assert registry.files() == [str((tmp_path / "halve.py").resolve())]


def test_unknown_plugin_lists_the_known_ones(tmp_path):
    _write(tmp_path, "halve", GOOD.format(n="a"))
    with pytest.raises(UserError, match=r"unknown plugin 'halve_b' \(did you mean 'halve_a'\?\); known: halve_a"):
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
