import pytest

from autocompress.config.schema import RunConfig, load_config, parse_duration
from autocompress.errors import UserError
from conftest import write_yaml


def test_defaults_are_the_embedded_digits_demo():
    config = load_config(None)
    assert config.data.source == "digits"
    assert config.model.name == "resnet18" and config.model.pretrained is False
    assert config.search_space.name == "default.yaml" and config.search_space.is_file()
    assert config.search.timeout is not None and config.search.timeout <= 600


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_cli_style_overrides_win_over_the_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"search": {"trials": 5, "timeout": "8h"}})
    config = load_config(path, {"search.trials": 7, "search.timeout": "30m"})
    assert config.search.trials == 7 and config.search.timeout == 1800


@pytest.mark.parametrize("data,expected", [
    ({"model": {"nme": "x"}}, "model.nme: unknown field; allowed: name, num_classes"),
    ({"budget": {"max_latency_ms": -1}}, "budget.max_latency_ms: Input should be greater than 0"),
    ({"search": {"sampler": "grid"}}, "search.sampler: Input should be 'tpe', 'nsga2' or 'random'"),
    ({"search": {"timeout": "soon"}}, "search.timeout: Value error, not a duration"),
    ({"data": {"source": "imagefolder"}}, "data: Value error, source 'imagefolder' needs data.path"),
    ({"device": {"runtime": "tensorrt"}}, "device.runtime: unknown runtime 'tensorrt'"),
    ({"colour": "blue"}, "colour: unknown field; allowed: model, data, budget"),
])
def test_bad_fields_give_one_line_naming_the_field(tmp_path, data, expected):
    with pytest.raises(UserError) as err:
        load_config(write_yaml(tmp_path / "bad.yaml", data))
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config: file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(bad)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "s.yaml").write_text("quantize: [int8_static]\n")
    config = load_config(write_yaml(tmp_path / "run.yaml", {"search_space": "spaces/s.yaml"}))
    assert config.search_space == (tmp_path / "spaces" / "s.yaml").resolve()


def test_every_field_is_optional():
    assert RunConfig().model_dump()


def test_a_checkpoint_or_pretrained_weights_are_compressed_as_they_are_unless_epochs_are_given(tmp_path):
    from autocompress.config import ModelConfig

    assert ModelConfig().base_epochs() == 6  # random weights: the demo trains its base
    assert ModelConfig(checkpoint=tmp_path / "w.safetensors").base_epochs() == 0
    assert ModelConfig(pretrained=True).base_epochs() == 0
    assert ModelConfig(checkpoint=tmp_path / "w.safetensors", train_epochs=2).base_epochs() == 2
    assert ModelConfig(train_epochs=0).base_epochs() == 0
