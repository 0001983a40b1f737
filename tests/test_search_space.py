import optuna
import pytest

from autocompress.errors import UserError
from autocompress.plugin.registry import discover
from autocompress.search.space import load_search_space, parse_search_space


@pytest.fixture(scope="module")
def registry():
    return discover()


def test_default_space_loads_and_merges_plugin_defaults(registry):
    from autocompress.config.schema import load_config

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


# --- issue 16: the default space on another runtime; warm-start values checked before any work ---

SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.8, "step": 0.1},
                                            "importance": ["l2", "l1"], "round_to": 8}},
    "distill": {"none": {}, "logit_kd": {"epochs": {"low": 1, "high": 4, "step": 1}}},
}


@pytest.mark.parametrize("warm, expected", [
    ({"prune": {"channel_prune": {"ratio": 5.0}}},
     "search_space.warm_start[0].prune.channel_prune.ratio: 5.0 is outside what channel_prune accepts "
     "(Input should be less than or equal to 0.95); the search space allows 0.3 to 0.8 in steps of 0.1"),
    ({"prune": {"channel_prune": {"ratio": 0.9}}},
     "search_space.warm_start[0].prune.channel_prune.ratio: 0.9 is outside the search space's range; "
     "the search space allows 0.3 to 0.8 in steps of 0.1"),
    ({"prune": {"channel_prune": {"ratio": 0.55}}},
     "search_space.warm_start[0].prune.channel_prune.ratio: 0.55 is not on the search space's steps; "
     "the search space allows 0.3 to 0.8 in steps of 0.1"),
    ({"prune": {"channel_prune": {"importance": "taylor"}}},
     "search_space.warm_start[0].prune.channel_prune.importance: 'taylor' is not among the search space's choices; "
     "the search space allows one of l2, l1"),
    ({"prune": {"channel_prune": {"round_to": 4}}},
     "search_space.warm_start[0].prune.channel_prune.round_to: 4 differs from the search space's fixed value; "
     "the search space allows only 8"),
    ({"distill": {"logit_kd": {"epochs": 7}}},
     "search_space.warm_start[0].distill.logit_kd.epochs: 7 is outside the search space's range; "
     "the search space allows 1 to 4 in steps of 1"),
    ({"prune": {"channel_prune": 0.5}}, "search_space.warm_start[0].prune.channel_prune: expected {param: value}, got 0.5"),
])
def test_warm_start_values_are_checked_against_the_plugin_and_the_space(registry, warm, expected):
    with pytest.raises(UserError) as err:
        parse_search_space({**SPACE, "warm_start": [warm]}, registry, "onnxruntime")
    assert str(err.value) == expected


def test_warm_start_values_inside_the_space_are_kept(registry):
    space = parse_search_space({**SPACE, "warm_start": [
        {"prune": {"channel_prune": {"ratio": 0.6, "importance": "l1"}}, "distill": {"logit_kd": {"epochs": 3}}}]},
        registry, "onnxruntime")
    # after a prune that does not train, the distill stage has one choice left (no ``none``): nothing to ask
    assert space.warm_start == [{"prune": "channel_prune", "prune.channel_prune.ratio": 0.6,
                                 "prune.channel_prune.importance": "l1", "distill.logit_kd.epochs": 3}]


@pytest.mark.parametrize("runtime", ["openvino", "torch", ["torch", "openvino"]])
def test_default_space_leaves_out_quantizers_for_another_runtime(registry, runtime):
    from autocompress.config.schema import PROJECT_ROOT
    from autocompress.plugin.contract import Stage

    space = load_search_space(PROJECT_ROOT / "search_spaces" / "default.yaml", registry, runtime)
    names = runtime if isinstance(runtime, list) else [runtime]
    for rt in names:
        assert space.options(Stage.QUANTIZE, rt) == ["none"]
        assert space.options(Stage.PRUNE, rt) == ["none", "channel_prune"]
    assert space.warm_start == []                  # every warm start of the default space quantizes with int8_static
    assert space.notes[0].startswith("search_space.quantize.int8_static: int8_static produces artefacts for "
                                     f"onnxruntime, not device.runtime={'/'.join(names)}: left out")
    assert space.notes[1:] == [f"search_space.warm_start[{i}]: dropped: quantize int8_static does not run on "
                               f"device.runtime={'/'.join(names)}" for i in range(3)]


def test_a_space_the_user_wrote_is_still_refused_for_a_foreign_quantizer(registry, tmp_path):
    import yaml

    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"quantize": {"none": {}, "int8_static": {}}}))
    with pytest.raises(UserError, match="int8_static produces artefacts for onnxruntime, not device.runtime=openvino"):
        load_search_space(tmp_path / "mine.yaml", registry, "openvino")


def test_openvino_run_with_the_default_space_validates_and_logs_what_was_left_out(tmp_path):
    pytest.importorskip("openvino")
    from autocompress.config.schema import load_config
    from autocompress.search.controller import Search

    config = load_config(overrides={
        "device.runtime": "openvino", "device.threads": 1, "device.warmup": 1, "device.repeats": 2, "device.rounds": 1,
        "model.name": "test_resnet", "model.train_epochs": 0, "data.max_samples": 100,
        "budget.max_latency_ms": None, "budget.max_size_mb": None, "budget.max_accuracy_drop": None})
    search = Search(config=config, run_dir=tmp_path / "run")
    search.validate()                                 # today's refusal: int8_static ... not device.runtime=openvino
    quantize = next(s for s in search.space.stages if s.value == "quantize")
    assert list(search.space.stages[quantize]) == ["none"]
    search.prepare()
    log = (tmp_path / "run" / "run.log").read_text()
    assert "search_space.quantize.int8_static: int8_static produces artefacts for onnxruntime, not " \
           "device.runtime=openvino: left out (quantize plugins for openvino: nncf_int8)" in log
    assert "search_space.warm_start[2]: dropped: quantize int8_static does not run on device.runtime=openvino" in log
