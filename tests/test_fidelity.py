"""Fine-tune length is a fidelity the scheduler owns (search.rungs): a warmup-stable-decay schedule
whose stable phase is kept at each rung, promotion among peers at least as compressed, a promoted
trial that continues its fine-tune, and where the search starts (the structures the budget allows,
no pruning without recovery, learning rates for a trained base). Real tiny models on digits."""

import time

import optuna
import pytest
import timm
import torch
from conftest import write_yaml

from autocompress.config import DataConfig, RunConfig
from autocompress.config.schema import load_config
from autocompress.data import load_data
from autocompress.errors import UserError
from autocompress.models import Rung, fit
from autocompress.models import _WarmupStableDecay as WSD
from autocompress.plugin import Stage, discover
from autocompress.search.controller import Search, _unstarted_firsts
from autocompress.search.space import parse_search_space
from autocompress.trial import TrialRecord, read_trials


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(source="digits", max_samples=300, batch_size=32), 32)


@pytest.fixture(scope="module")
def registry():
    return discover()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10)


def test_the_rung_schedule_warms_up_holds_then_decays_to_zero():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    wsd = WSD(opt, 0.01, warmup=4, decay_start=20, total=30)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        wsd.step()
    assert lrs[0] < lrs[3] < 0.01 and lrs[4:20] == [0.01] * 16
    assert all(a > b for a, b in zip(lrs[20:], lrs[21:])) and lrs[-1] == pytest.approx(0.001)
    assert Rung(epochs=1.0, decay=0.2).decay_start(10) == 8 and Rung(epochs=3.0, decay=0.2).decay_start(10) == 24


def test_a_promoted_fit_continues_to_the_weights_of_one_trained_straight_to_its_rung(digits):
    torch.set_num_threads(1)
    kw = {"lr": 0.003, "seed": 3, "batch_size": 32, "epochs": 99.0}  # a rung sets the length, not ``epochs``
    straight = fit(_model(), digits, **kw, rung=Rung(epochs=3.0, warmup=0.1))

    kept = []
    first = fit(_model(), digits, **kw, rung=Rung(epochs=1.0, warmup=0.1, keep=kept.append))
    (state,) = kept
    per_epoch = -(-len(digits.train) // 32)
    assert state.step == Rung(epochs=1.0).decay_start(per_epoch)  # where the first rung began its decay
    promoted = Rung(epochs=3.0, warmup=0.1, start=state)
    epochs_seen = []
    continued = fit(_model(), digits, **kw, rung=promoted, on_epoch=lambda e, m: epochs_seen.append(e))
    assert promoted.continued and epochs_seen == [0, 1, 2]
    for (name, a), b in zip(straight.state_dict().items(), continued.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    # the first rung's own decay is not part of the trajectory the next rung continues
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), continued.state_dict().values()))


def test_a_state_of_another_shape_is_not_continued(digits):
    kept = []
    fit(_model(), digits, lr=0.003, epochs=1, batch_size=32, rung=Rung(epochs=0.5, keep=kept.append))
    torch.manual_seed(0)
    other = timm.create_model("test_resnet", num_classes=10, width_factor=0.5) if False else torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    rung = Rung(epochs=1.0, start=kept[0])
    fit(other, digits, lr=0.003, epochs=1, batch_size=32, rung=rung)
    assert not rung.continued


def _space(raw, registry, **kw):
    return parse_search_space(raw, registry, "onnxruntime", **kw)


def test_with_rungs_the_length_is_the_schedulers_unless_the_space_names_it(registry):
    raw = {"distill": {"none": {}, "logit_kd": {}}}
    space = _space(raw, registry, rungs=[1.0, 3.0])
    assert "epochs" not in space.stages[next(iter(space.stages))]["logit_kd"]
    assert space.scheduled and list(space.scheduled.values()) == [{"logit_kd": "epochs"}]
    named = _space({"distill": {"logit_kd": {"epochs": {"low": 1, "high": 6, "step": 1}}}}, registry, rungs=[1.0, 3.0])
    assert not named.scheduled and any("epochs: named in the space, so searched" in n for n in named.notes)
    off = _space(raw, registry, rungs=None)
    assert not off.scheduled and "epochs" in off.stages[next(iter(off.stages))]["logit_kd"]
    with pytest.raises(UserError, match=r"^search_space.warm_start\[0\].distill.logit_kd.epochs: set by the fidelity"):
        _space({**raw, "warm_start": [{"distill": {"logit_kd": {"epochs": 3}}}]}, registry, rungs=[1.0, 3.0])


def test_a_trained_base_gets_the_plugins_learning_rates_for_one(registry):
    raw = {"distill": {"logit_kd": {}}}
    lr = lambda space: list(space.stages.values())[0]["logit_kd"]["lr"]["choices"]  # noqa: E731
    assert lr(_space(raw, registry)) == [1e-4, 3e-4, 1e-3, 3e-3]
    trained = _space(raw, registry, pretrained=True)
    assert lr(trained) == [1e-4, 3e-4, 1e-3] and any("the base is trained" in n for n in trained.notes)
    named = _space({"distill": {"logit_kd": {"lr": [3e-3]}}}, registry, pretrained=True)
    assert lr(named) == [3e-3] and not any("the base is trained" in n for n in named.notes)  # the user's range wins


def test_pruning_is_not_proposed_without_recovery_when_the_space_offers_one(registry):
    raw = {"prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.6, "step": 0.2}}},
           "distill": {"none": {}, "logit_kd": {}}, "quantize": {"none": {}}}
    space = _space(raw, registry, rungs=[1.0])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        c = space.suggest(trial, registry)
        seen.add((c["prune"][0], c["distill"][0]))
        study.tell(trial, 0.0)
    assert seen == {("none", "none"), ("none", "logit_kd"), ("channel_prune", "logit_kd")}
    with pytest.raises(UserError, match=r"recovery fine-tune"):
        _space({**raw, "warm_start": [{"prune": "channel_prune", "distill": "none"}]}, registry)
    # a warm start that leaves the stage out gets its only choice, the recovery
    warmed = _space({**raw, "warm_start": [{"prune": "channel_prune"}]}, registry)
    study = optuna.create_study()
    study.enqueue_trial(warmed.warm_start[0])
    assert warmed.suggest(study.ask(), registry)["distill"][0] == "logit_kd"
    only = _space({**raw, "distill": {"none": {}}}, registry)  # the space asks for pruning alone: it gets it
    study = optuna.create_study()
    study.enqueue_trial({"prune": "channel_prune"})
    assert only.suggest(study.ask(), registry)["distill"][0] == "none"


def _record(number, accuracy, size_mb, ratio, index=0, promoted_from=None, whole=None):
    return TrialRecord.measured(number=number, choices={}, started=time.time(), host=None, structure_only=False, parts={
        "metrics": {"accuracy": accuracy, "latency_ms": ratio, "size_bytes": int(size_mb * 1e6), "size_mb": size_mb,
                    "params": 1, "precision": "fp32", "runtime": "onnxruntime", "latency_vs_base": ratio},
        "latency_vs_base": ratio, "whole_val_after_training": whole,
        "rung": {"index": index, "epochs": [1.0, 3.0, 9.0][index], "promoted_from": promoted_from}})


def test_promotion_compares_a_trial_only_with_peers_at_least_as_compressed(tmp_path):
    config = RunConfig.model_validate({"budget": {"max_latency_ms": None, "max_size_mb": 5.0,
                                                  "max_accuracy_drop": 1.0}, "search": {"rungs": [1, 3, 9], "eta": 3}})
    search = Search(config=config, run_dir=tmp_path)
    search.base = _record(-1, 80.0, 40.0, 1.0)
    # three light, accurate trials; one heavily pruned trial, less accurate; one over the size budget
    search.records = {r.number: r for r in [
        _record(0, 78.0, 4.0, 0.6), _record(1, 77.0, 4.5, 0.62), _record(2, 76.0, 4.8, 0.7),
        _record(3, 60.0, 1.0, 0.2), _record(4, 79.0, 9.0, 0.8)]}
    first, rung = search._promotable()
    assert (first.number, rung) == (0, 1)  # the most accurate of three peers within the budget
    search._promoted.add(0)
    second, _ = search._promotable()
    # trial 3, at 60 %, has no peer as compressed as it: the best of its kind, it moves up; trial 1 (77 %) has
    # peers {0, 1, 3} at least as compressed, 0 ahead of it: not in the top third; trial 2 has 0 and 1 ahead of 4
    assert second.number == 3
    search._promoted.add(3)
    assert search._promotable() is None  # and 4, the most accurate, breaks the size budget
    # a finished promotion takes its parent's place on the front
    search.records[5] = _record(5, 79.5, 4.0, 0.6, index=1, promoted_from=0)
    assert search._superseded() == {0}


@pytest.mark.parametrize("rungs, cheap, dear", [([1, 3, 9], 1, 0), ([1, 5, 6], 0, 1)])
def test_the_promotion_that_adds_the_fewest_epochs_goes_first(tmp_path, rungs, cheap, dear):
    config = RunConfig.model_validate({"budget": {"max_latency_ms": None, "max_size_mb": 5.0,
                                                  "max_accuracy_drop": 1.0}, "search": {"rungs": rungs, "eta": 3}})
    search = Search(config=config, run_dir=tmp_path)
    search.base = _record(-1, 80.0, 40.0, 1.0)
    # trial 0, feasible at the middle rung; trial 1, more compressed, at the first rung under the floor
    search.records = {0: _record(0, 79.5, 4.0, 0.5, index=1), 1: _record(1, 78.5, 3.0, 0.4, index=0)}
    found, rung = search._promotable()
    assert found.number == cheap and rung == found.rung.index + 1
    search._promoted.add(cheap)
    assert search._promotable()[0].number == dear  # the dearer one still goes before any new trial


def test_a_peerless_trial_is_not_promoted_when_the_rises_seen_cannot_lift_it_to_the_floor(tmp_path):
    config = RunConfig.model_validate({"budget": {"max_latency_ms": None, "max_size_mb": 5.0,
                                                  "max_accuracy_drop": 1.0}, "search": {"rungs": [1, 3, 9], "eta": 3}})
    search = Search(config=config, run_dir=tmp_path)
    search.base, search.val_images = _record(-1, 80.0, 40.0, 1.0), 5000  # floor 79 %
    # a heavily pruned trial at 3 epochs, 4 pp under the floor, with no peer as compressed as it
    heavy = _record(4, 75.0, 1.0, 0.3, index=1, whole=75.0)
    search.records = {4: heavy}
    assert search._promotable()[0].number == 4  # no chain has reached the top yet: no evidence, promoted
    # one chain rose 1.9 pp from 3 to 9 epochs; 75 + 1.9 + 1.73 (two standard deviations of two readings
    # of 5,000 images) < 79: out of reach
    search.records.update({3: _record(3, 78.9, 4.0, 0.45, index=1, whole=78.9),
                           6: _record(6, 80.8, 4.0, 0.45, index=2, promoted_from=3, whole=80.8)})
    search._promoted = {3}
    assert search._promotable() is None
    assert "not promoted: trial 4" in (tmp_path / "run.log").read_text()
    search.records[4] = _record(4, 76.0, 1.0, 0.3, index=1, whole=76.0)  # 76 + 1.9 + 1.7 reaches 79
    assert search._promotable()[0].number == 4
    search.config.budget.max_accuracy_drop = None  # no accuracy budget: the peer rule alone decides
    search.records[4] = heavy
    assert search._promotable()[0].number == 4


@pytest.fixture
def rung_config(tmp_path, tiny_config_dict):
    space = {"prune": {"none": {}}, "distill": {"logit_kd": {"lr": 0.003}}, "quantize": {"none": {}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "search": {**tiny_config_dict["search"], "trials": 2, "rungs": [1, 2], "eta": 2}}
    return load_config(write_yaml(tmp_path / "run.yaml", cfg))


def test_a_promoted_trial_continues_its_fine_tune_from_the_rung_below(tmp_path, rung_config):
    run = tmp_path / "out"
    Search(config=rung_config, run_dir=run).search()
    first, promoted = read_trials(run)
    assert first.state == promoted.state == "complete"
    assert first.rung.model_dump() == {"index": 0, "epochs": 1.0, "promoted_from": None, "continued": False}
    assert promoted.rung.model_dump() == {"index": 1, "epochs": 2.0, "promoted_from": 0, "continued": True}
    assert first.choices["distill"] == ["logit_kd", {"lr": 0.003, "epochs": 1.0}] or \
        first.choices["distill"][1]["epochs"] == 1.0
    assert promoted.choices["distill"][1]["epochs"] == 2.0
    assert [p[0] for p in promoted.curve] == [1, 2]  # its epochs, counted from the start of training
    assert any("promoted trial 0" in line for line in (run / "run.log").read_text().splitlines())


def test_without_warm_starts_the_least_compressing_structure_that_meets_the_budget_goes_first(tmp_path,
                                                                                              tiny_config_dict):
    space = {"prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.6, "step": 0.1}}},
             "distill": {"none": {}, "logit_kd": {}}, "quantize": {"none": {}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space))}
    config = load_config(write_yaml(tmp_path / "run.yaml", cfg))
    search = Search(config=config, run_dir=tmp_path / "out")
    search.validate()
    search.prepare()

    def size(ratio):
        return search._probe({"prune": ("channel_prune", {"ratio": ratio}), "distill": ("none", {}),
                              "quantize": ("none", {})}).metrics.size_mb

    sizes = {r: size(r) for r in (0.2, 0.3, 0.4, 0.5, 0.6)}
    assert sizes[0.2] > sizes[0.6]
    cap = (sizes[0.3] + sizes[0.4]) / 2 if sizes[0.3] > sizes[0.4] else (sizes[0.4] + sizes[0.5]) / 2
    search.config.budget.max_size_mb = cap
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    search._first_structures(study)
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1
    first = search.space.suggest(study.ask(), search.registry)
    ratio = first["prune"][1]["ratio"]
    assert sizes[ratio] <= cap and sizes[round(ratio - 0.1, 10)] > cap  # the least pruning that fits

    def shape(r):
        return search._shape({"prune": ("channel_prune", {"ratio": r}), "quantize": ("none", {})},
                             search.base.metrics.runtime)

    # the probe over the size cap is remembered: no sweep variant re-measures that structure
    assert shape(round(ratio - 0.1, 10)) in search._fixed_misses() and shape(ratio) not in search._fixed_misses()
    assert first["distill"][0] == "logit_kd"  # with its recovery fine-tune, at the middle of each searched range
    lrs = search.space.stages[Stage.DISTILL]["logit_kd"]["lr"]
    lrs = lrs["choices"] if isinstance(lrs, dict) else lrs
    assert first["distill"][1]["lr"] == lrs[(len(lrs) - 1) // 2] and len(lrs) >= 3
    log = (tmp_path / "out" / "run.log").read_text()
    assert "first structures: channel_prune" in log and "is fine-tuned first" in log

    search.space.warm_start = [{"quantize": "none"}]  # a space with warm starts starts from those instead
    other = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    search._first_structures(other)
    assert other.trials == []


def test_a_promoted_fine_tune_stopped_after_training_still_records_that_it_continued(tmp_path, tiny_config_dict):
    # 60 % pruned and barely trained (lr 1e-6): far under the base, so the top rung stops after training
    space = {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": {"logit_kd": {"lr": 1e-6}}, "quantize": {"none": {}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "budget": {**tiny_config_dict["budget"], "max_accuracy_drop": 0.0},
           "search": {**tiny_config_dict["search"], "trials": 2, "rungs": [1, 2], "eta": 2, "early_stop": "budget"}}
    run = tmp_path / "out"
    Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=run).search()
    first, promoted = read_trials(run)
    assert first.state == "complete"  # below the top rung: measured, never stopped on its curve
    assert promoted.state == "pruned" and promoted.stopped.after_training
    assert promoted.rung.promoted_from == 0 and promoted.rung.continued


def test_first_structures_are_probed_beside_the_base_and_fine_tuned_with_the_probed_quantizer(tmp_path,
                                                                                          tiny_config_dict):
    space = {"prune": {"channel_prune": {"ratio": {"low": 0.2, "high": 0.4, "step": 0.1}}},
             "distill": {"logit_kd": {}},
             "quantize": {"int8_static": {"keep_first_last_float": [True, False], "calibration": ["percentile",
                                                                                                  "minmax"]}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "budget": {**tiny_config_dict["budget"], "max_latency_vs_base": 100.0}}
    search = Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=tmp_path / "out")
    search.validate()
    search.prepare()
    probe = search._probe({"prune": ("channel_prune", {"ratio": 0.3}), "distill": ("none", {}),
                           "quantize": ("int8_static", {"keep_first_last_float": False})})
    # timed in the same window as the base, like a trial: the machine's speed drifts over a night
    assert probe.base_latency_same_window is not None
    assert probe.metrics.latency_vs_base == pytest.approx(
        probe.metrics.latency_ms / probe.base_latency_same_window.median_ms, rel=1e-3)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    search._first_structures(study)
    fixed = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0].system_attrs["fixed_params"]
    assert fixed["quantize.int8_static.keep_first_last_float"] is False  # queued, not left to the sampler
    assert "quantize.int8_static.calibration" not in fixed
    first = search.space.suggest(study.ask(), search.registry)
    assert first["prune"][1]["ratio"] == 0.2  # every ratio meets a budget of 100x: the least pruning goes first
    # the quantizer's structural parameter as probed (the most compressing, listed second here); the
    # calibration, which leaves the structure alone, is the sampler's
    assert first["quantize"][0] == "int8_static" and first["quantize"][1]["keep_first_last_float"] is False
    assert "the reference timed beside it" in (tmp_path / "out" / "run.log").read_text()


def test_until_a_model_is_feasible_the_fine_tune_nearest_the_floor_goes_on_before_other_first_structures(tmp_path):
    config = RunConfig.model_validate({"budget": {"max_latency_ms": None, "max_size_mb": 5.0,
                                                  "max_accuracy_drop": 1.0}, "search": {"rungs": [1, 2, 4], "eta": 3}})
    search = Search(config=config, run_dir=tmp_path)
    search.base = _record(-1, 80.0, 40.0, 1.0)  # floor 79 %
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for a, values in enumerate(([78.6, 0.5, 4.0], [77.0, 0.4, 3.0])):
        study.enqueue_trial({"a": a})
        trial = study.ask()
        trial.suggest_int("a", 0, 9)
        study.tell(trial, values)
    # trial 0 (the least compressing first structure) at the second rung, 0.4 pp under the floor; trial 1,
    # more compressed, at the first; a third first structure not started yet
    search.records = {0: _record(0, 78.6, 4.0, 0.5, index=1), 1: _record(1, 77.0, 3.0, 0.4, index=0)}
    study.set_user_attr("first_structures", [{"a": 0}, {"a": 1}, {"a": 2}])
    search._firsts = _unstarted_firsts(study)
    assert search._firsts == [{"a": 2}]  # what a resume reads back: the one the study does not hold

    assert search._promotable()[0].number == 1  # the cheapest promotion, once a model is feasible
    search._enqueue_next(study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs.get("promote") for t in waiting] == [{"from": 0, "rung": 2}]  # nearest the floor
    assert "no feasible model yet" in (tmp_path / "run.log").read_text()
    assert search._firsts == [{"a": 2}]  # the other first structure waits

    study.ask()  # the promotion starts; it finishes feasible
    search.records[2] = _record(2, 79.4, 4.0, 0.5, index=2, promoted_from=0)
    search.records[2].feasible = True
    search._enqueue_next(study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"a": 2}]  # now the first structure
    assert search._firsts == []
    study.ask()
    search._enqueue_next(study)  # then the promotions, cheapest first
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs.get("promote") for t in waiting] == [{"from": 1, "rung": 1}]


def test_optuna_is_told_latency_beside_the_base_not_milliseconds_from_a_drifted_window(tmp_path):
    config = RunConfig.model_validate({"budget": {"max_latency_ms": None, "max_size_mb": 5.0,
                                                  "max_accuracy_drop": 1.0}})
    search = Search(config=config, run_dir=tmp_path)
    search.base = _record(-1, 80.0, 40.0, 2.0)  # the base read 2.0 ms at the run's start
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    search._latency_scale_ms = 2.0  # as _study keeps it for the whole run (a resume re-times the base)
    # timed later, in a window 1.5x slower: 1.5 ms, but half the base timed beside it
    record = _record(0, 79.5, 4.0, 0.5)
    record.metrics.latency_ms = 1.5
    trial = study.ask()
    search._tell(study, trial, record)
    assert study.trials[0].values == [79.5, pytest.approx(1.0), 4.0]  # 0.5 x the base's 2.0 ms
    assert search.records[0].metrics.latency_ms == 1.5  # the record keeps what was measured
