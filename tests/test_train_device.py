"""Train where it is fast, measure where it ships: ``train.device`` picks where trials fine-tune,
``device.type`` where their artefacts are exported, timed and evaluated, each on its own."""

import json

import pytest
import torch

from autocompress.config import RunConfig, load_config
from autocompress.errors import UserError
from autocompress.search.controller import Search
from autocompress.trial import TrialRecord, resolve_devices, run_trial
from conftest import write_yaml
from test_cli import assert_one_line_error, run_cli

NO_CUDA = not torch.cuda.is_available()
PRUNE_KD = {"prune": ["channel_prune", {"ratio": 0.5}], "distill": ["logit_kd", {"epochs": 1, "lr": 0.003}],
            "quantize": ["none", {}]}
NOTHING = {"prune": ["none", {}], "distill": ["none", {}], "quantize": ["none", {}]}


def _config(**sections) -> RunConfig:
    return RunConfig.model_validate(sections)


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda"])
def test_the_config_accepts_each_train_device(value):
    assert load_config(overrides={"train.device": value}).train.device == value


def test_train_device_defaults_to_auto():
    assert RunConfig().train.device == "auto"


@pytest.mark.parametrize("overrides,line", [
    ({"train.device": "gpu"}, "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
    ({"train.device": "CUDA"}, "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'CUDA')"),
    ({"train.gpus": 1}, "train.gpus: unknown field; allowed: device"),
])
def test_a_bad_train_section_is_one_line_naming_the_field(overrides, line):
    with pytest.raises(UserError) as err:
        load_config(overrides=overrides)
    assert str(err.value) == line


def test_training_and_measuring_devices_are_chosen_apart():
    gpu_box = {"cuda": True}
    assert resolve_devices(_config(train={"device": "auto"}, device={"type": "cpu"}), **gpu_box) == (
        torch.device("cuda"), torch.device("cpu"))
    assert resolve_devices(_config(train={"device": "cuda"}, device={"type": "cpu"}), **gpu_box) == (
        torch.device("cuda"), torch.device("cpu"))
    assert resolve_devices(_config(train={"device": "cpu"}, device={"type": "cuda"}), **gpu_box) == (
        torch.device("cpu"), torch.device("cuda"))
    assert resolve_devices(_config(train={"device": "auto"}), cuda=False) == (torch.device("cpu"), torch.device("cpu"))


@pytest.mark.parametrize("sections,reason", [
    ({"train": {"device": "cuda"}}, "train.device is cuda but this worker sees no CUDA device"),
    ({"train": {"device": "cpu"}, "device": {"type": "cuda"}}, "device.type is cuda but this worker sees no CUDA device"),
])
def test_cuda_where_the_worker_sees_none_is_a_clear_reason(sections, reason):
    with pytest.raises(RuntimeError, match=reason):
        resolve_devices(_config(**sections), cuda=False)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_auto_trains_on_the_cpu_of_a_machine_without_cuda():
    assert resolve_devices(RunConfig()) == (torch.device("cpu"), torch.device("cpu"))


@pytest.fixture(scope="module")
def cpu_trained(tmp_path_factory):
    """A run folder whose base is trained and measured, trials fine-tuning on the CPU."""
    tmp = tmp_path_factory.mktemp("train_device")
    config = RunConfig.model_validate({
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 300, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None},
        "device": {"type": "cpu", "threads": 1, "warmup": 2, "repeats": 5, "rounds": 1},
        "train": {"device": "cpu"},
        "search": {"sampler": "random", "trials": 2, "timeout": None, "seed": 0, "early_stop": "none",
                   "proxy_gate": None},
    })
    search = Search(config=config, run_dir=tmp / "run")
    search.validate()
    search.prepare()
    return search


def test_a_trial_trained_on_the_cpu_names_its_train_device(cpu_trained):
    record = run_trial(cpu_trained._spec(0, PRUNE_KD))
    assert record.state == "complete", record.reason
    assert record.curve and record.durations["distill"] > 0           # it did fine-tune
    assert record.train_device.startswith("cpu:") and record.device.startswith("cpu:")
    assert record.metrics.latency_ms > 0 and record.metrics.accuracy is not None
    again = TrialRecord.from_json(json.dumps(record.to_json()), "trials.jsonl line 1")
    assert again.train_device == record.train_device
    old = {k: v for k, v in record.to_json().items() if k != "train_device"}   # a run from before the field
    assert TrialRecord.from_json(old, "old trials.jsonl line 1").train_device is None
    repeat = run_trial(cpu_trained._spec(3, PRUNE_KD))       # the same configuration: its artefact, timed again
    assert repeat.cache.kind == "artefact" and repeat.cache.from_trial == 0
    assert repeat.train_device == record.train_device


def test_a_trial_that_trains_nothing_names_no_train_device(cpu_trained):
    record = run_trial(cpu_trained._spec(1, NOTHING))
    assert record.state == "complete", record.reason
    assert record.train_device is None and record.device.startswith("cpu:")


def test_machine_json_notes_where_trials_train(cpu_trained):
    machine = json.loads((cpu_trained.run.path / "machine.json").read_text())
    assert machine["train"] == {"device": "cpu", "resolved": "cpu"}


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_a_trial_spec_forcing_cuda_training_fails_with_the_reason(cpu_trained):
    spec = cpu_trained._spec(2, PRUNE_KD)
    spec.config["train"]["device"] = "cuda"
    record = run_trial(spec)
    assert record.state == "fail"
    assert record.reason == "RuntimeError: train.device is cuda but this worker sees no CUDA device"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_cuda_training_on_a_machine_without_cuda_is_refused_before_the_search(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"model": {"name": "test_resnet", "train_epochs": 1},
                                              "data": {"max_samples": 200}, "train": {"device": "cuda"}})
    result = run_cli("search", config, "--out", tmp_path / "o")
    assert_one_line_error(result, "train.device: cuda, but this machine sees no CUDA device", "use train.device auto or cpu")
    assert not (tmp_path / "o").exists()


def test_cuda_training_on_ray_without_gpus_per_trial_is_refused_before_the_search(tmp_path):
    config = _config(model={"name": "test_resnet", "train_epochs": 1}, data={"max_samples": 200},
                     train={"device": "cuda"}, search={"executor": "ray", "gpus_per_trial": 0})
    with pytest.raises(UserError, match=r"^train.device: cuda needs search.gpus_per_trial above 0 on Ray") as err:
        Search(config=config, run_dir=tmp_path / "run").validate()
    assert "\n" not in str(err.value)
