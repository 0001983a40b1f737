import optuna
import pytest

from autocompress.errors import UserError
from autocompress.registry import discover
from autocompress.search_space import load_search_space, parse_search_space


@pytest.fixture(scope="module")
def registry():
    return discover()


def test_default_space_loads_and_merges_plugin_defaults(registry):
    from autocompress.config import load_config

    space = load_search_space(load_config(None).search_space, registry, "onnxruntime")
    assert set(space.stages["prune"]) == {"none", "channel_prune"}
    assert space.stages["prune"]["channel_prune"]["ratio"]["high"] == 0.8          # file overrides
    assert "temperature" in space.stages["distill"]["logit_kd"]                  # plugin default kept
    assert space.warm_start[0] == {"prune": "none", "distill": "none", "quantize": "int8_static"}


@pytest.mark.parametrize("raw,expected", [
    ({"prune": {"magic_prune": {}}}, "search_space.prune.magic_prune: unknown plugin 'magic_prune'; known prune plugins: channel_prune"),
    ({"prune": {"channel_prune": {"ratio": {"low": 0.2, "high": 1.5}}}}, "search_space.prune.channel_prune.ratio: 1.5 is outside what channel_prune accepts"),
    ({"prune": {"channel_prune": {"ratio": {"low": 0.6, "high": 0.2}}}}, "search_space.prune.channel_prune.ratio: low (0.6) is above high (0.2)"),
    ({"prune": {"channel_prune": {"sparsity": 0.5}}}, "search_space.prune.channel_prune.sparsity: unknown parameter of channel_prune; allowed: ratio"),
    ({"prune": {"channel_prune": {"importance": ["l1", "fisher"]}}}, "search_space.prune.channel_prune.importance: 'fisher' is outside what channel_prune accepts"),
    ({"quantize": {"channel_prune": {}}}, "search_space.quantize.channel_prune: channel_prune is a prune plugin, not quantize"),
    ({"prunning": {"none": {}}}, "search_space.prunning: unknown key; allowed: prune, distill, quantize, warm_start"),
    ({"quantize": {"none": {}}, "warm_start": [{"quantize": "int8_static"}]}, "search_space.warm_start[0].quantize: 'int8_static' is not among"),
])
def test_bad_spaces_give_one_clear_line(registry, raw, expected):
    with pytest.raises(UserError) as err:
        parse_search_space(raw, registry, "onnxruntime")
    assert str(err.value).startswith(expected), str(err.value)


def test_runtime_mismatch_is_caught_before_searching(registry):
    with pytest.raises(UserError, match="int8_static produces artefacts for onnxruntime, not device.runtime=torch"):
        parse_search_space({"quantize": {"int8_static": {}}}, registry, "torch")


def test_suggestions_stay_inside_the_space(registry):
    space = parse_search_space({
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.5, "step": 0.1}}},
        "quantize": {"int8_static": {"calibration": "minmax"}},
    }, registry, "onnxruntime")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        chosen = space.suggest(trial, registry)
        name, params = chosen["prune"]
        seen.add(name)
        if name == "channel_prune":
            assert 0.3 - 1e-9 <= params["ratio"] <= 0.5 + 1e-9
        assert chosen["distill"] == ("none", {})
        assert chosen["quantize"][0] == "int8_static" and chosen["quantize"][1]["calibration"] == "minmax"
        study.tell(trial, [0, 0])
    assert seen == {"none", "channel_prune"}


def test_strongest_takes_the_most_compressing_corner(registry):
    space = parse_search_space({"prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.1, "high": 0.6}}},
                                "distill": {"logit_kd": {}}, "quantize": {"none": {}, "int8_static": {}}},
                               registry, "onnxruntime")
    strongest = space.strongest(registry)
    assert strongest["prune"][0] == "channel_prune" and strongest["prune"][1]["ratio"] == 0.6
    assert strongest["distill"] == ("none", {})          # distillation does not change structure
    assert strongest["quantize"][0] == "int8_static"
