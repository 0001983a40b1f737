"""Lineage (issue 18): a more compressed trial starts from a finished, less compressed trial's fine-tuned
model, pruned further to the structure that pruning the base directly gives. Real tiny models on digits."""

from __future__ import annotations

import copy
import json
import statistics
import time
from types import SimpleNamespace

import pytest
import timm
import torch

from autocompress.config import RunConfig, load_config
from autocompress.plugin import discover
from autocompress.search import Search
from autocompress.search.controller import _carried, _middle
from autocompress.trial import TrialRecord, TrialSpec, read_trials, run_trial
from autocompress.trial.record import RungUse
from conftest import write_yaml


@pytest.fixture(scope="module")
def prune():
    return discover().get("channel_prune")


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_pruning_a_pruned_model_further_gives_the_structure_of_pruning_the_base(prune):
    base = timm.create_model("test_resnet", num_classes=10).eval()
    ctx = SimpleNamespace(example_input=torch.randn(2, 3, 32, 32), original=None, structure_only=True)
    # round_to 4: at 8, torch-pruning keeps a 16-channel layer whole at 0.6 (6 rounds down to 0) but not at 0.3
    direct = prune.from_params({"ratio": 0.6, "round_to": 4}).apply(copy.deepcopy(base), ctx)
    parent = prune.from_params({"ratio": 0.3, "round_to": 4}).apply(copy.deepcopy(base), ctx)
    with torch.no_grad():  # as if fine-tuned: the child must keep the parent's weights, not the base's
        for p in parent.parameters():
            p.add_(torch.randn_like(p))
    stem = parent.conv1[0].weight.detach().clone() if isinstance(parent.conv1, torch.nn.Sequential) else \
        parent.conv1.weight.detach().clone()
    child = prune.from_params({"ratio": 0.6, "round_to": 4}).apply(parent, SimpleNamespace(**{**vars(ctx),
                                                                                               "original": base}))
    assert _shapes(child) == _shapes(direct)
    assert _shapes(child) != _shapes(base)
    kept = child.conv1[0].weight if isinstance(child.conv1, torch.nn.Sequential) else child.conv1.weight
    assert all(any(torch.equal(row, p) for p in stem) for row in kept)  # each kept filter is one of the parent's
    # and pruned without the base: ratios would count from the parent, a smaller model than the direct one
    again = prune.from_params({"ratio": 0.3, "round_to": 4}).apply(copy.deepcopy(base), ctx)
    smaller = prune.from_params({"ratio": 0.6, "round_to": 4}).apply(again, ctx)
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in direct.parameters())


def _record(number, ratio, accuracy, *, importance="l2", stored=True, stopped=False, state="complete"):
    parts = {"metrics": {"accuracy": accuracy, "latency_ms": 1.0, "size_bytes": 1000, "size_mb": 0.001,
                         "params": 1, "precision": "fp32", "runtime": "onnxruntime"},
             "cache": {"key": f"k{number}", "hit": False, "kind": "model", "stored": stored}}
    if stopped:
        parts["stopped"] = {"stage": "distill", "reason": "under the floor"}
    record = TrialRecord.measured(number=number, started=time.time(), host=None, structure_only=False, parts=parts,
                                  choices={"prune": ["channel_prune", {"ratio": ratio, "importance": importance}],
                                           "distill": ["logit_kd", {"lr": 3e-4}], "quantize": ["none", {}]})
    record.state = state
    return record


def test_the_parent_is_the_closest_less_pruned_trial_with_the_same_criterion(tmp_path):
    search = Search(config=RunConfig(), run_dir=tmp_path)
    search.registry = discover()
    search.records = {r.number: r for r in [
        _record(0, 0.3, 70.0), _record(1, 0.5, 60.0), _record(2, 0.5, 65.0), _record(3, 0.6, 90.0),
        _record(4, 0.5, 99.0, importance="l1"), _record(5, 0.5, 99.0, stored=False),
        _record(6, 0.5, 99.0, stopped=True), _record(7, 0.5, 99.0, state="fail")]}
    child = {"prune": ("channel_prune", {"ratio": 0.6, "importance": "l2"}), "distill": ("logit_kd", {"lr": 1e-3})}
    # the highest ratio below 0.6 with l2, a stored model and a finished fine-tune; the more accurate of two
    assert search._parent(child) == {"parent": 2, "key": "k2"}
    assert search._parent({**child, "prune": ("channel_prune", {"ratio": 0.3, "importance": "l2"})}) is None
    assert search._parent({**child, "prune": ("none", {})}) is None
    search.config.search.lineage = False
    assert search._parent(child) is None


def test_a_requeued_or_promoted_trial_keeps_its_lineage_and_first_fine_tunes_use_the_middle_recipe():
    assert _carried({"promote": {"from": 1, "rung": 1}, "lineage": None, "choices": {}}) == {
        "promote": {"from": 1, "rung": 1}, "lineage": None}
    assert _middle([1e-4, 3e-4, 1e-3]) == 3e-4
    assert _middle({"low": 2.0, "high": 8.0, "step": 2.0}) == 4.0
    assert _middle({"low": 1e-4, "high": 1e-2, "log": True}) == pytest.approx(1e-3)


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    space = {"prune": {"channel_prune": {"ratio": [0.3, 0.6], "round_to": 4}}, "distill": {"logit_kd": {"lr": 0.003}},
             "quantize": {"none": {}},
             "warm_start": [{"prune": {"channel_prune": {"ratio": 0.3}}},
                            {"prune": {"channel_prune": {"ratio": 0.6}}}]}
    cfg = {"model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
           "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
           "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 50.0},
           "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
           "search_space": str(write_yaml(tmp / "space.yaml", space)),
           "search": {"sampler": "random", "trials": 2, "timeout": None, "seed": 0, "early_stop": "none", "proxy_gate": None,
                      "rungs": [1]}}
    config = load_config(write_yaml(tmp / "run.yaml", cfg))
    run = tmp / "out"
    Search(config=config, run_dir=run).search()
    return config, run


def test_a_more_pruned_trial_starts_from_the_less_pruned_ones_fine_tuned_model(lineage_run):
    _, run = lineage_run
    parent, child = read_trials(run)
    assert parent.choices["prune"][1]["ratio"] == 0.3 and child.choices["prune"][1]["ratio"] == 0.6
    assert parent.lineage is None and parent.state == child.state == "complete"
    assert 0.0 <= parent.proxy <= 100.0 and "proxy" in parent.durations  # scored at its structure probe
    assert child.lineage.model_dump() == {"parent": 0, "used": True, "reason": None}
    assert child.cache.key != parent.cache.key and child.cache.stored
    assert "lineage_check" in child.durations
    assert any("starts from trial 0's fine-tuned model" in line for line in child.plugin_log)


def test_a_parent_whose_model_left_the_cache_is_recorded_and_the_base_is_pruned(lineage_run, tmp_path):
    config, run = lineage_run
    child = read_trials(run)[1]
    spec = TrialSpec(number=7, choices=child.choices, run_dir=str(run), config=config.model_dump(mode="json"),
                     plugin_files=discover().files(), lineage={"parent": 0, "key": "0" * 64})
    record = run_trial(spec)
    assert record.state == "complete"
    assert record.lineage.used is False and "no longer in the cache" in record.lineage.reason
    # the child's structure was timed before (its probe, its trial): the budget reads the median of all
    m, seen = record.metrics, [child.probe.latency_vs_base, child.metrics.latency_vs_base, record.metrics.latency_vs_base]
    assert m.latency_pooled_from == 3 and m.latency_vs_base_pooled == round(statistics.median(seen), 4)
    # a direct prune is a different model from the child's: not the child's memo entry
    assert record.cache.key != child.cache.key
    assert json.loads((run / "trials" / "0007" / "record.json").read_text())["lineage"]["parent"] == 0


def test_a_parent_that_cannot_be_pruned_to_the_direct_structure_is_not_used(lineage_run):
    config, run = lineage_run
    parent, child = read_trials(run)
    # at round_to 8 the 16-channel stem is kept whole at 0.6 but halved at 0.3: no further pruning reaches it
    choices = {**child.choices, "prune": ["channel_prune", {"ratio": 0.6, "round_to": 8}]}
    spec = TrialSpec(number=8, choices=choices, run_dir=str(run), config=config.model_dump(mode="json"),
                     plugin_files=discover().files(), lineage={"parent": 0, "key": parent.cache.key})
    record = run_trial(spec)
    assert record.state == "complete" and record.lineage.used is False
    assert "does not give the structure" in record.lineage.reason


@pytest.mark.parametrize("ratio, accuracy, overrides, expected", [
    (0.4, 79.5, {}, 0.5),                        # over the floor (79 %): the next ratio of the grid
    (0.4, 78.5, {}, None),                       # under the floor: no step
    (0.6, 79.5, {}, None),                       # the grid's end
    (0.4, 79.5, {"iterate": False}, None),
    (0.4, 79.5, {"lineage": False}, None),       # iterative pruning starts from the model: it needs lineage
    (0.4, 79.5, {"swept": True}, None),          # a sweep variant trained nothing of its own
    (0.4, 79.5, {"rung": 1}, 0.5),               # over the floor below the top rung: feasible, so it steps on
    (0.4, 78.5, {"rung": 0}, None),              # under the floor at the first rung
])
def test_a_fine_tune_over_the_floor_is_followed_by_the_next_ratio_from_its_model(tmp_path, tiny_config_dict, ratio,
                                                                               accuracy, overrides, expected):
    import optuna

    space = {"prune": {"channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.1}, "importance": ["l2", "l1"]}},
             "distill": {"logit_kd": {"lr": [1e-4, 3e-4, 1e-3]}}, "quantize": {"none": {}}}
    search_cfg = {k: v for k, v in overrides.items() if k not in ("swept", "rung")}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "budget": {**tiny_config_dict["budget"], "max_accuracy_drop": 1.0},
           "search": {**tiny_config_dict["search"], "rungs": [1, 3, 9], **search_cfg}}
    search = Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=tmp_path / "out")
    search.validate()
    search.run.path.mkdir()
    search.base = _record(-1, 0.0, 80.0)
    record = _record(0, ratio, accuracy)
    record.swept_from = 9 if overrides.get("swept") else None
    record.rung = RungUse(index=overrides.get("rung", 2), epochs=[1.0, 3.0, 9.0][overrides.get("rung", 2)])
    search.records = {0: record}
    assert search._iterate(record) is (expected is not None)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    search._enqueue_next(study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    if expected is None:
        assert waiting == []
        return
    trial = study.ask()
    assert trial.user_attrs["iterate"] == {"from": 0}
    choices = search.space.suggest(trial, search.registry)
    assert choices["prune"][1]["ratio"] == expected and choices["prune"][1]["importance"] == "l2"
    assert choices["distill"][1]["lr"] == 3e-4  # the rest of its configuration
    assert search._parent(choices) == {"parent": 0, "key": "k0"}  # started from its model
    assert search._iterate(record) is False  # queued once
    assert "iterate: trial 0 (79.50%, ratio 0.4) is pruned further to ratio 0.5" in \
        (tmp_path / "out" / "run.log").read_text()
