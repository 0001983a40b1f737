"""Per-stage widths and the cheap proxy (issue 21): channel_prune's ``stage_ratios`` over timm's
feature_info stages, per-element ranges in the search space, and BatchNorm-recalibrated top-1 of an
untrained structure. Real tiny timm models on digits."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import optuna
import pytest
import timm
import torch

from conftest import write_yaml

from autocompress.config import DataConfig, load_config
from autocompress.data import load_data
from autocompress.errors import UserError
from autocompress.measure import module_predictor, recalibrated_top1, top1
from autocompress.models import fit, model_stages
from autocompress.plugin import Stage, describe_spec, discover, strongest_value
from autocompress.search import Search
from autocompress.search.space import parse_search_space
from autocompress.trial import read_trials


@pytest.fixture(scope="module")
def registry():
    return discover()


def _ctx():
    return SimpleNamespace(example_input=torch.randn(2, 3, 32, 32), original=None, structure_only=True)


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_every_layer_but_the_classifier_belongs_to_one_stage(name):
    model = timm.create_model(name, num_classes=10)
    stages = model_stages(model)
    names = [layer for _, layers in stages for layer in layers]
    assert len(stages) >= 3 and len(names) == len(set(names))
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    head = {n for n, m in model.named_modules() if m is model.get_classifier()}
    assert set(names) == layers - head
    order = [n for n, _ in model.named_modules()]
    assert [order.index(n) for n in names] == sorted(order.index(n) for n in names)  # stages in order


def test_one_ratio_per_stage_prunes_each_stage_by_its_own(registry):
    prune = registry.get("channel_prune")
    base = timm.create_model("test_resnet", num_classes=10).eval()
    count = len(model_stages(base))
    uniform = prune.from_params({"ratio": 0.5, "round_to": 4}).apply(copy.deepcopy(base), _ctx())
    same = prune.from_params({"stage_ratios": [0.5] * count, "round_to": 4}).apply(copy.deepcopy(base), _ctx())
    assert _params(same) == _params(uniform)
    late = prune.from_params({"stage_ratios": [0.0] * (count - 1) + [0.75], "round_to": 4}).apply(
        copy.deepcopy(base), _ctx())
    assert late.layer1[0].conv1.out_channels == base.layer1[0].conv1.out_channels  # early stages whole
    assert late.layer4[0].conv1.out_channels < base.layer4[0].conv1.out_channels
    assert late(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match=rf"stage_ratios: 2 values for the {count} stages of this model \(act1, layer1"):
        prune.from_params({"stage_ratios": [0.5, 0.5]}).apply(copy.deepcopy(base), _ctx())
    assert prune.lineage_value({"ratio": 0.5}) == 0.5
    assert prune.lineage_value({"ratio": 0.5, "stage_ratios": [0.5] * count}) is None  # ratio sets nothing then


def test_a_per_stage_range_is_one_optuna_parameter_per_stage(registry):
    raw = {"prune": {"channel_prune": {"stage_ratios": {"low": 0.2, "high": 0.8, "step": 0.1, "size": "stages"}}},
           "distill": {"none": {}}, "quantize": {"none": {}},
           "warm_start": [{"prune": {"channel_prune": {"stage_ratios": [0.2, 0.3, 0.4, 0.5, 0.6]}}}]}
    space = parse_search_space(raw, registry, count_stages=lambda: 5)
    spec = space.stages[Stage.PRUNE]["channel_prune"]["stage_ratios"]
    assert spec["size"] == 5 and describe_spec(spec).startswith("a list of values (5), each 0.2 to 0.8")
    assert strongest_value(spec, "high") == [0.8] * 5
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(space.warm_start[0])
    first = space.suggest(study.ask(), registry)["prune"][1]["stage_ratios"]
    assert first == [0.2, 0.3, 0.4, 0.5, 0.6]
    drawn = space.suggest(study.ask(), registry)["prune"][1]["stage_ratios"]
    assert len(drawn) == 5 and all(0.2 <= r <= 0.8 for r in drawn)
    with pytest.raises(UserError, match=r"warm_start\[0\].prune.channel_prune.stage_ratios: \[0.5\] is not a list of 5"):
        parse_search_space({**raw, "warm_start": [{"prune": {"channel_prune": {"stage_ratios": [0.5]}}}]}, registry,
                           count_stages=lambda: 5)
    with pytest.raises(UserError, match=r"stage_ratios.size: 0; allowed: a count >= 1, or 'stages'"):
        parse_search_space({**raw, "warm_start": [], "prune": {"channel_prune": {"stage_ratios": {
            "low": 0.2, "high": 0.8, "size": 0}}}}, registry)
    with pytest.raises(UserError, match=r"size 'stages' needs the model"):
        parse_search_space({**raw, "warm_start": []}, registry)


def test_batchnorm_recalibration_recovers_what_shifted_statistics_hide():
    data = load_data(DataConfig(source="digits", max_samples=400, batch_size=32), 32)
    model = timm.create_model("test_resnet", num_classes=10)
    fit(model, data, lr=0.01, epochs=3, batch_size=32)
    model.eval()
    clean = top1(module_predictor(model), data.val)
    shifted = copy.deepcopy(model)
    for m in shifted.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean += 3.0  # what removing channels upstream does to a layer's inputs, exaggerated
    before = top1(module_predictor(shifted), data.val)
    state = {k: v.clone() for k, v in shifted.state_dict().items()}
    after = recalibrated_top1(shifted, data.train, data.val, calibrate=256, evaluate=len(data.val))
    assert clean > 25.0 and before < clean - 15.0  # digits training varies run to run (38-80 %)
    assert after > before + 15.0
    assert all(torch.equal(state[k], v) for k, v in shifted.state_dict().items())  # the model is left as it was


def test_a_search_over_per_stage_widths_runs_and_scores_each_structure(tmp_path, tiny_config_dict):
    space = {"prune": {"channel_prune": {"stage_ratios": {"low": 0.2, "high": 0.6, "step": 0.2, "size": "stages"},
                                         "round_to": 4}},
             "distill": {"logit_kd": {"lr": 0.003}}, "quantize": {"none": {}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "search": {**tiny_config_dict["search"], "trials": 2, "rungs": [1], "proxy_gate": 5.0}}
    run = tmp_path / "out"
    Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=run).search()
    records = read_trials(run)
    assert len(records) == 2 and records[0].state == "complete"
    # the second is fine-tuned unless the first structure, no larger and no slower, beat its proxy clearly
    second = records[1]
    assert second.state == "complete" or (second.state == "pruned" and second.stopped.stage == "proxy"
                                          and "trial 0's structure" in second.reason)
    stages = len(model_stages(timm.create_model("test_resnet", num_classes=10)))
    for r in records:
        ratios = r.choices["prune"][1]["stage_ratios"]
        assert len(ratios) == stages and all(x in (0.2, 0.4, 0.6) for x in ratios)
        assert 0.0 <= r.proxy <= 100.0
    assert records[0].choices["prune"][1]["stage_ratios"] != records[1].choices["prune"][1]["stage_ratios"]


def test_the_latency_budget_reads_the_median_of_every_measurement_of_a_structure(tmp_path):
    from autocompress.config.schema import BudgetConfig
    from autocompress.objectives import constraints, is_feasible, structure_verdict
    from autocompress.trial.memo import LatencyHistory

    history = LatencyHistory(tmp_path, "k" * 64, keep=3)
    for trial, ratio in enumerate([0.44, 0.47, 0.52, 0.49]):
        history.add(ratio, trial)
    assert history.seen() == [0.47, 0.52, 0.49]  # the most recent three
    assert LatencyHistory(tmp_path, "j" * 64).seen() == []
    budget = BudgetConfig(max_latency_ms=None, max_size_mb=None, max_accuracy_drop=None, max_latency_vs_base=0.5)
    one_window = {"latency_ms": 1.0, "size_mb": 1.0, "accuracy": 80.0, "latency_vs_base": 0.52}
    assert not is_feasible(constraints({"metrics": one_window}, budget, 80.0))
    pooled = {**one_window, "latency_vs_base_pooled": 0.47, "latency_pooled_from": 3}
    assert is_feasible(constraints({"metrics": pooled}, budget, 80.0))
    assert structure_verdict({**pooled, "latency_vs_base_pooled": 0.6}, budget, 0.1) is not None
