"""Spending the night on promising trials: a structure that breaks the budget is stopped before
its fine-tune, a curve that cannot reach the floor stops early, a fine-tuned model is reused and
a corrupt cache entry is rebuilt. Real tiny searches on digits."""

import json

import optuna
import pytest

from autocompress.config.schema import BudgetConfig, RunConfig
from autocompress.search.controller import Search
from autocompress.trial import TrialRecord
from autocompress.data import load_data
from autocompress.measure.accuracy import top1
from autocompress.objectives import constraints
from autocompress.plugin.contract import Artefact
from autocompress.measure.runtimes import get_runtime
from autocompress.trial.pipeline import run_trial
from conftest import write_yaml

PRUNE_KD = {"prune": ["channel_prune", {"ratio": 0.6}], "distill": ["logit_kd", {"epochs": 3, "lr": 0.003}],
            "quantize": ["none", {}]}


def _config(tmp_path, tiny_config_dict, space=None, **overrides) -> RunConfig:
    cfg = json.loads(json.dumps(tiny_config_dict))
    cfg["search"]["early_stop"] = "budget"
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    if space is not None:
        cfg["search_space"] = str(write_yaml(tmp_path / "space.yaml", space))
    return RunConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, request):
    """A run folder with its base trained and measured (no trials yet)."""
    tiny = request.getfixturevalue("tiny_config_dict")
    tmp = tmp_path_factory.mktemp("spend")
    search = Search(config=_config(tmp, tiny), run_dir=tmp / "run")
    search.validate()
    search.prepare()
    return search


@pytest.fixture(scope="module")
def tiny_config_dict():
    return {
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None},
        "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
        "search": {"sampler": "random", "trials": 3, "timeout": None, "seed": 0, "proxy_gate": None},
    }


def _spec(search, number, choices, budget=None, search_cfg=None, **kw):
    spec = search._spec(number, choices, **kw)
    spec.config["budget"].update(budget or {})
    spec.config["search"].update(search_cfg or {})
    return spec


def test_a_structure_over_the_latency_budget_never_starts_its_fine_tune(prepared):
    record = run_trial(_spec(prepared, 0, PRUNE_KD, budget={"max_latency_ms": 1e-6}))
    assert record["state"] == "complete", record["reason"]
    assert record["stopped"]["stage"] == "structure" and "latency" in record["stopped"]["reason"]
    assert "distill" not in record["durations"] and record["curve"] == []   # the KD never ran
    assert record["metrics"] == record["probe"] and record["metrics"]["latency_ms"] > 0
    assert 0 < record["metrics"]["params"] < prepared.base["metrics"]["params"] and "timings" not in record
    assert record["artefact"] is None
    # the same trial within budget runs its fine-tune and keeps both the probe's and the final figures
    full = run_trial(_spec(prepared, 1, PRUNE_KD, search_cfg={"cache": False}))
    assert full["state"] == "complete" and "stopped" not in full
    assert [step for step, _ in full["curve"]] == [1, 2, 3] and full["durations"]["distill"] > 0
    assert full["probe"]["size_bytes"] == full["metrics"]["size_bytes"]   # the structure decides the size


def test_a_structure_over_the_latency_ratio_budget_never_starts_its_fine_tune(prepared):
    record = run_trial(_spec(prepared, 5, PRUNE_KD, budget={"max_latency_vs_base": 0.01}))
    assert record["stopped"]["stage"] == "structure" and "x the base > budget 0.01x" in record["stopped"]["reason"]
    assert "distill" not in record["durations"] and 0 < record["metrics"]["latency_vs_base"]
    budget = BudgetConfig(max_latency_ms=None, max_size_mb=None, max_accuracy_drop=None, max_latency_vs_base=0.01)
    assert constraints(record, budget, 0.0)["latency_vs_base"] > 0            # told to Optuna as infeasible


def test_a_size_stop_is_told_to_optuna_as_infeasible_with_its_figures(tmp_path, tiny_config_dict):
    # the most compressed structure (pruned 60 %) meets 1 MB, so the check before the search lets the run
    # start; the warm start makes its first trial the base's structure, 1.5 MB, over it
    space = {"prune": {"none": {}, "channel_prune": {"ratio": 0.6}}, "distill": {"logit_kd": {"epochs": 3}},
             "warm_start": [{"distill": "logit_kd"}]}
    config = _config(tmp_path, tiny_config_dict, space, **{"budget.max_size_mb": 1.0})
    config.search.trials = 1
    Search(config=config, run_dir=tmp_path / "run").search()
    probe = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert probe["choices"]["prune"][0] == "channel_prune" and probe["metrics"]["size_mb"] <= 1.0
    record = json.loads((tmp_path / "run" / "trials.jsonl").read_text().splitlines()[0])
    assert record["choices"]["prune"][0] == "none" and record["metrics"]["size_mb"] > 1.0
    assert record["stopped"]["stage"] == "structure" and record["feasible"] is False
    assert record["constraints"]["size"] == pytest.approx(record["metrics"]["size_mb"] / 1.0 - 1.0, abs=1e-5)
    study = optuna.load_study(study_name=config.search.study_name, storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert max(study.trials[0].constraints.values()) > 0
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert pareto["throughput"]["stopped_by_stage"] == {"structure": 1}


def test_a_curve_that_cannot_reach_the_floor_stops_and_is_recorded(tmp_path, tiny_config_dict):
    space = {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": {"logit_kd": {"epochs": 3, "lr": 0.003}}}
    config = _config(tmp_path, tiny_config_dict, space, **{"budget.max_accuracy_drop": 0.0})
    config.search.trials = 1
    search = Search(config=config, run_dir=tmp_path / "run")
    inputs = search._stop_inputs      # as if three fine-tunes on this schedule had gained 2 pp after epoch 1
    search._stop_inputs = lambda: {**inputs(), "history": [[[1, 50.0], [2, 51.0], [3, 52.0]]] * 3}
    search.search()
    record = json.loads((tmp_path / "run" / "trials.jsonl").read_text().splitlines()[0])
    base = json.loads((tmp_path / "run" / "base.json").read_text())["metrics"]
    assert record["state"] == "pruned"
    stop = record["stopped"]
    assert stop["stage"] == "distill" and stop["step"] == 1 and stop["rule"] == "floor"
    assert f"cannot reach the accuracy floor {base['accuracy']:.2f}%" in record["reason"]
    assert len(record["curve"]) == 1                      # 1 of 3 epochs ran
    assert record["constraints"]["accuracy"] > 0           # an infeasible point for the sampler
    study = optuna.load_study(study_name=config.search.study_name, storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_a_fine_tune_that_ended_under_the_floor_is_not_quantized_or_measured(prepared):
    int8 = dict(PRUNE_KD, distill=["logit_kd", {"epochs": 2, "lr": 0.003}], quantize=["int8_static", {}])
    # no history: no gain can be bounded, so nothing stops during the fine-tune; after it, none is left
    record = run_trial(_spec(prepared, 50, int8, search_cfg={"early_stop": "budget"}, floor=101.0))
    assert record["state"] == "pruned" and record["stopped"]["rule"] == "floor"
    assert record["stopped"]["step"] == 2 and record["stopped"]["after_training"] is True
    assert "(training over)" in record["reason"] and [s for s, _ in record["curve"]] == [1, 2]
    assert "quantize" not in record["durations"] and "measure" not in record["durations"]
    reachable = run_trial(_spec(prepared, 51, int8, search_cfg={"early_stop": "budget", "cache": False}, floor=0.0))
    assert reachable["state"] == "complete" and reachable["durations"]["quantize"] > 0
    # a fine-tune followed by another training stage (QAT) is judged only after the last one
    qat = dict(PRUNE_KD, distill=["logit_kd", {"epochs": 1, "lr": 0.003}], quantize=["int8_qat", {"epochs": 1}])
    both = run_trial(_spec(prepared, 52, qat, search_cfg={"early_stop": "budget", "cache": False}, floor=101.0))
    assert both["stopped"]["after_training"] is True and [s for s, _ in both["curve"]] == [1, 2]
    assert both["stopped"]["stage"] == "quantize" and both["stopped"]["step"] == 2


def test_a_fine_tune_stopped_after_training_is_not_trained_again_for_another_quantizer(prepared):
    kd = dict(PRUNE_KD, distill=["logit_kd", {"epochs": 2, "lr": 0.002}])
    budget = {"search_cfg": {"early_stop": "budget"}}
    first = run_trial(_spec(prepared, 60, kd, floor=101.0, **budget))
    assert first["stopped"]["after_training"] is True and first["durations"]["distill"] > 0
    int8 = dict(kd, quantize=["int8_static", {}])
    again = run_trial(_spec(prepared, 61, int8, floor=101.0, **budget))
    assert again["state"] == "pruned" and again["verdict_of"] == 60 and again["stopped"]["after_training"] is True
    assert "distill" not in again["durations"] and "quantize" not in again["durations"]
    assert again["curve"] == first["curve"] and "trial 60: not trained again" in again["reason"]
    assert again["whole_val_after_training"] == first["whole_val_after_training"]
    # where the same model would now pass (here a lower floor), the verdict does not hold: it trains
    reach = run_trial(_spec(prepared, 62, int8, floor=0.0, **budget))
    assert reach["state"] == "complete" and reach.get("verdict_of") is None and reach["durations"]["distill"] > 0


def test_curves_stopped_after_training_are_history_and_ones_stopped_during_it_are_not(prepared):
    whole, cut, hit = [[1, 50.0], [2, 60.0]], [[1, 40.0]], [[1, 70.0], [2, 75.0]]
    records = {
        900: {"state": "complete", "curve": whole},
        901: {"state": "pruned", "curve": whole, "stopped": {"rule": "floor", "after_training": True}},
        902: {"state": "pruned", "curve": cut, "stopped": {"rule": "halving"}},
        903: {"state": "complete", "curve": hit, "cache": {"key": "k", "kind": "model", "hit": True}},
    }
    records = {n: TrialRecord.from_json({"number": n, "choices": {}, "started": 0.0, **r}, "test") for n, r in records.items()}
    saved = prepared.records
    prepared.records = records
    try:
        assert prepared._stop_inputs()["history"] == [whole, whole]
    finally:
        prepared.records = saved


def test_test_accuracy_is_evaluated_only_for_a_trial_within_the_budget(prepared):
    int8 = {"quantize": ["int8_static", {"calibration_batches": 3}]}
    base = prepared.base["metrics"]["accuracy"]
    within = run_trial(_spec(prepared, 60, int8, budget={"max_accuracy_drop": 50.0}, floor=base - 50.0))
    assert within["metrics"]["test_accuracy"] > 0
    cfg = {"structure_first": False, "cache": False}
    slow = run_trial(_spec(prepared, 61, int8, budget={"max_latency_ms": 1e-6}, search_cfg=cfg))
    assert slow["state"] == "complete" and slow["metrics"]["accuracy"] > 0 and slow["metrics"]["test_accuracy"] is None
    under = run_trial(_spec(prepared, 62, int8, budget={"max_accuracy_drop": 0.0}, floor=101.0, search_cfg=cfg))
    assert under["metrics"]["test_accuracy"] is None
    unknown = run_trial(_spec(prepared, 63, int8, budget={"max_accuracy_drop": 0.0}, search_cfg=cfg))
    assert unknown["metrics"]["test_accuracy"] > 0                 # no floor given: the accuracy budget is not judged
    assert prepared.base["metrics"]["test_accuracy"] > 0           # the base always has it


def test_a_trial_stopped_behind_others_is_told_as_infeasible_not_as_a_good_pruned_one(tmp_path, tiny_config_dict):
    space = {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": {"logit_kd": {"epochs": 3, "lr": 0.003}}}
    config = _config(tmp_path, tiny_config_dict, space, **{"search.early_stop": "halving"})
    config.search.trials = 1
    search = Search(config=config, run_dir=tmp_path / "run")
    inputs = search._stop_inputs      # as if three fine-tunes on this schedule had all been at 100 % after epoch 1
    search._stop_inputs = lambda: {**inputs(), "history": [[[1, 100.0], [2, 100.0], [3, 100.0]]] * 3}
    search.search()
    record = json.loads((tmp_path / "run" / "trials.jsonl").read_text().splitlines()[0])
    assert record["state"] == "pruned" and record["stopped"]["rule"] == "halving"
    assert record["constraints"] == {"stopped": 0.01}             # no budget to break: infeasible, barely
    study = optuna.load_study(study_name=config.search.study_name, storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.constraints == {"stopped": 0.01}
    # TPE's split: a PRUNED trial with a violated constraint is no longer a candidate for the good group
    from optuna.samplers._tpe.sampler import _get_infeasible_trial_score
    assert _get_infeasible_trial_score(trial) > 0


def test_with_early_stop_none_the_same_trial_runs_to_the_end(prepared):
    base = prepared.base["metrics"]["accuracy"]
    record = run_trial(_spec(prepared, 2, PRUNE_KD, search_cfg={"early_stop": "none", "cache": False}, floor=base))
    assert record["state"] == "complete" and len(record["curve"]) == 3


def test_a_cached_fine_tune_is_reused_and_a_corrupt_entry_is_rebuilt(prepared):
    run = prepared.run.path
    first = run_trial(_spec(prepared, 10, PRUNE_KD))
    assert first["cache"]["hit"] is False and first["cache"]["stored"] is True and first["durations"]["distill"] > 0
    entries = sorted((run / "cache" / "models" / first["cache"]["key"]).glob("*.safetensors"))
    assert len(entries) == 1

    int8 = dict(PRUNE_KD, quantize=["int8_static", {"calibration_batches": 2}])
    second = run_trial(_spec(prepared, 11, int8))
    assert second.cache.model_dump(exclude_none=True) == {"key": first["cache"]["key"], "hit": True, "kind": "model", "from_trial": 10,
                               "saved_s": pytest.approx(second["cache"]["saved_s"])}
    assert "distill" not in second["durations"] and "prune" not in second["durations"]
    assert second["curve"] == first["curve"] and second["metrics"]["precision"] == "int8"
    assert second["metrics"]["params"] == first["metrics"]["params"]

    blob = entries[0]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    recalibrated = dict(PRUNE_KD, quantize=["int8_static", {"calibration_batches": 3}])   # not a whole repeat
    third = run_trial(_spec(prepared, 12, recalibrated))
    assert third["state"] == "complete"
    assert third["cache"]["hit"] is False and third["cache"]["corrupt_rebuilt"] is True
    assert third["durations"]["distill"] > 0                # trained again, not trusted
    fourth = run_trial(_spec(prepared, 13, dict(PRUNE_KD, quantize=["int8_static", {"calibration_batches": 4}])))
    assert fourth["cache"]["hit"] is True and fourth["cache"]["from_trial"] == 12   # the rebuilt entry is whole again


def test_a_repeated_configuration_reuses_its_artefact_is_timed_again_and_a_corrupt_one_rebuilt(prepared):
    int8 = dict(PRUNE_KD, quantize=["int8_static", {"calibration_batches": 5}])
    first = run_trial(_spec(prepared, 40, int8, search_cfg={"early_stop": "none"}))
    assert first["state"] == "complete" and first["durations"]["quantize"] > 0
    again = run_trial(_spec(prepared, 41, int8, search_cfg={"early_stop": "none"}))
    assert again["cache"]["kind"] == "artefact" and again["cache"]["hit"] and again["cache"]["from_trial"] == 40
    assert set(again["durations"]) == {"export", "measure"}                  # nothing pruned, trained or quantized
    assert again["latency"]["calls"] > 0 and again["latency"] != first["latency"]   # timed again, now
    for key in ("accuracy", "test_accuracy", "size_bytes", "params", "precision"):
        assert again["metrics"][key] == first["metrics"][key]
    assert again["curve"] == first["curve"]
    run = prepared.run.path
    assert (run / again["artefact"]).read_bytes() == (run / first["artefact"]).read_bytes()
    # the same bytes: the reused accuracy is what evaluating the file gives
    predict = get_runtime("onnxruntime").load(Artefact(run / again["artefact"], "onnxruntime"), threads=1)
    val = load_data(prepared.config.data, prepared.config.model.img_size).val
    assert top1(predict, val, batch_size=32) == pytest.approx(first["metrics"]["accuracy"], abs=1e-3)

    cached = run / "cache" / "artefacts" / again["cache"]["key"] / "model.onnx"
    (run / again["artefact"]).unlink()                       # a trial folder removed: the entry does not depend on it
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.unlink()
    cached.write_bytes(bytes(data))
    rebuilt = run_trial(_spec(prepared, 42, int8, search_cfg={"early_stop": "none"}))
    assert rebuilt["artefact_cache"]["corrupt_rebuilt"] is True and rebuilt["durations"]["quantize"] > 0
    assert rebuilt["metrics"]["accuracy"] == first["metrics"]["accuracy"]   # ran in full, to the same result
    assert run_trial(_spec(prepared, 43, int8, search_cfg={"early_stop": "none"}))["cache"]["from_trial"] == 42


def test_a_probed_structure_is_reused_and_a_bad_memo_probed_again(prepared):
    over = {"max_latency_ms": 1e-6}                         # every structure stops at the probe
    pruned = dict(PRUNE_KD, prune=["channel_prune", {"ratio": 0.3}])
    first = run_trial(_spec(prepared, 20, pruned, budget=over))
    assert first["stopped"]["stage"] == "structure" and "probe_from" not in first
    longer = dict(pruned, distill=["logit_kd", {"epochs": 1, "lr": 0.01}])   # same structure, other fine-tune
    second = run_trial(_spec(prepared, 21, longer, budget=over))
    assert second["probe_from"] == 20 and second["metrics"] == first["metrics"]   # not timed again
    int8 = dict(pruned, quantize=["int8_static", {"calibration_batches": 2}])     # another structure
    third = run_trial(_spec(prepared, 22, int8, budget=over))
    assert "probe_from" not in third and third["metrics"]["precision"] == "int8"
    assert run_trial(_spec(prepared, 23, int8, budget=over, search_cfg={"cache": False})).get("probe_from") is None
    recalibrated = dict(pruned, quantize=["int8_static", {"calibration_batches": 4, "calibration": "percentile"}])
    assert run_trial(_spec(prepared, 25, recalibrated, budget=over))["probe_from"] == 22   # calibration: not structure
    per_tensor = dict(pruned, quantize=["int8_static", {"calibration_batches": 2, "per_channel": False}])
    assert "probe_from" not in run_trial(_spec(prepared, 26, per_tensor, budget=over))

    memo = {json.loads(p.read_text())["meta"]["trial"]: p for p in (prepared.run.path / "cache" / "probes").glob("*.json")}
    memo[20].write_text("{not json")
    again = run_trial(_spec(prepared, 24, pruned, budget=over))
    assert "probe_from" not in again and again["metrics"]["size_bytes"] == first["metrics"]["size_bytes"]
    assert json.loads(memo[20].read_text())["meta"]["trial"] == 24


def test_a_probe_within_budget_skips_accuracy_and_is_probed_again_when_a_budget_stops_it(prepared):
    pruned = dict(PRUNE_KD, prune=["channel_prune", {"ratio": 0.5}])  # a structure no other test probes
    passed = run_trial(_spec(prepared, 27, pruned, search_cfg={"early_stop": "none"}))
    assert "stopped" not in passed and "probe_from" not in passed and passed["probe"]["latency_ms"] > 0
    assert "accuracy" not in passed["probe"] and "test_accuracy" not in passed["probe"]   # never evaluated
    assert passed["metrics"]["accuracy"] > 0                                              # the final artefact is
    # the memo holds no accuracy, which a trial stopped at the structure needs for its record
    shorter = dict(pruned, distill=["logit_kd", {"epochs": 2, "lr": 0.003}])     # the same structure
    stopped = run_trial(_spec(prepared, 28, shorter, budget={"max_latency_ms": 1e-6}))
    assert stopped["stopped"]["stage"] == "structure" and "probe_from" not in stopped
    assert 0 <= stopped["metrics"]["accuracy"] <= 100 and stopped["metrics"] == stopped["probe"]
    again = run_trial(_spec(prepared, 29, dict(pruned, distill=["logit_kd", {"epochs": 1}]),
                            budget={"max_latency_ms": 1e-6}))
    assert again["probe_from"] == 28 and again["metrics"] == stopped["metrics"]


def test_a_trial_that_cannot_reach_the_front_stops(prepared):
    flat = [[[1, 50.0], [2, 50.0], [3, 50.0]]] * 3          # finished trials gained nothing after epoch 1
    better = [[100.0, 1e-6, 1e-6]]                           # a feasible front point better everywhere
    stopped = run_trial(_spec(prepared, 30, PRUNE_KD, search_cfg={"early_stop": "front", "cache": False},
                              history=flat, front=better))
    assert stopped["state"] == "pruned" and stopped["stopped"]["rule"] == "front"
    assert stopped["stopped"]["step"] == 1 and "cannot reach the front" in stopped["reason"]
    budget_only = run_trial(_spec(prepared, 31, PRUNE_KD, search_cfg={"early_stop": "budget", "cache": False},
                                  history=flat, front=better))
    assert budget_only["state"] == "complete" and len(budget_only["curve"]) == 3


def test_the_front_handed_to_trials_holds_feasible_finished_trials_only(prepared):
    def rec(n, acc, lat, mb, feasible, state="complete"):
        return TrialRecord.from_json({
            "number": n, "choices": {}, "started": 0.0, "state": state, "feasible": feasible, "curve": [[1, acc]],
            "latency_vs_base": lat / 2, "metrics": {"accuracy": acc, "latency_ms": lat, "size_mb": mb, "size_bytes": int(mb * 1e6),
                                                    "params": 1000, "precision": "fp32", "runtime": "onnxruntime"}}, "test")

    saved = dict(prepared.records)
    try:
        prepared.records.clear()
        prepared.records.update({0: rec(0, 90, 1.0, 4.0, True), 1: rec(1, 95, 0.5, 2.0, False),
                                 2: rec(2, 80, 2.0, 8.0, True), 3: rec(3, 85, 0.5, 1.0, False, "pruned")})
        assert prepared._stop_inputs()["front"] == [[90.0, 1.0, 4.0, 0.5]]   # 2 is dominated, 1 and 3 do not count
    finally:
        prepared.records.clear()
        prepared.records.update(saved)


def test_the_teacher_runs_once_per_batch_per_run_and_fine_tunes_train_exactly_as_without(prepared):
    import shutil

    from autocompress.plugin.teacher import TeacherOutputs

    shutil.rmtree(prepared.run.path / "cache" / "teacher", ignore_errors=True)
    TeacherOutputs.forget()
    no_stop = {"early_stop": "none"}
    first = run_trial(_spec(prepared, 40, dict(PRUNE_KD, distill=["logit_kd", {"epochs": 3, "lr": 0.004}]),
                            search_cfg=no_stop))
    batches = first["teacher_batches"]["computed"]
    assert batches > 0 and first["teacher_batches"]["reused"] == 0

    other = dict(PRUNE_KD, distill=["logit_kd", {"epochs": 3, "lr": 0.004, "alpha": 0.5}])  # no model cache hit
    TeacherOutputs.forget()                                 # read from the run folder, as another worker would
    second = run_trial(_spec(prepared, 41, other, search_cfg=no_stop))
    assert second["cache"]["hit"] is False and second["durations"]["distill"] > 0
    assert second.teacher_batches.model_dump() == {"reused": batches, "computed": 0, "corrupt_rebuilt": 0, "compute_s": 0.0}
    assert first["teacher_batches"]["compute_s"] > 0

    plain = run_trial(_spec(prepared, 42, other, search_cfg={**no_stop, "cache": False}))
    assert "teacher_batches" not in plain
    assert plain["curve"] == second["curve"] and plain["metrics"]["accuracy"] == second["metrics"]["accuracy"]


def test_only_configurations_that_train_are_probed_first(prepared):
    one_shot = {"prune": ["channel_prune", {"ratio": 0.5}], "distill": ["none", {}], "quantize": ["none", {}]}
    iterative = {"prune": ["channel_prune", {"ratio": 0.5, "iterative_steps": 2, "finetune_epochs": 1}],
                 "distill": ["none", {}], "quantize": ["none", {}]}
    once = run_trial(_spec(prepared, 60, one_shot, search_cfg={"cache": False}))
    assert once["state"] == "complete" and once.probe is None and "structure_first" not in once["durations"]
    tuned = run_trial(_spec(prepared, 61, iterative, search_cfg={"cache": False}))
    assert tuned["state"] == "complete" and tuned.probe is not None and len(tuned["curve"]) == 1
    assert tuned["metrics"]["size_bytes"] == pytest.approx(once["metrics"]["size_bytes"], rel=0.01)


def test_a_structure_whose_rival_scores_a_clearly_better_proxy_is_not_fine_tuned(prepared):
    from autocompress.trial.memo import ProbeMemo

    lr = lambda value: {**PRUNE_KD, "distill": ["logit_kd", {"epochs": 3, "lr": value}]}  # noqa: E731
    # learning rates no other test uses: no repeat of an earlier trial's whole configuration
    first = run_trial(_spec(prepared, 40, lr(7e-4), search_cfg={"proxy_gate": None}))
    assert first["state"] == "complete" and first["proxy"] is not None and "stopped" not in first
    # another structure of this run: no larger, no slower, 10 points better on the proxy
    rival = {"metrics": {**first["probe"], "size_mb": first["probe"]["size_mb"] * 0.99}, "proxy": first["proxy"] + 10}
    ProbeMemo(prepared.run.path / "cache" / "probes", "rival-structure").put(rival, 99)
    gated = run_trial(_spec(prepared, 41, lr(6e-4), search_cfg={"proxy_gate": 5.0}))
    assert gated["state"] == "pruned" and gated["stopped"]["stage"] == "proxy"
    assert "trial 99" in gated["reason"] and "10.0 points below" in gated["reason"]
    assert "distill" not in gated["durations"] and gated["curve"] == [] and gated["artefact"] is None
    assert gated["stopped"]["accuracy"] == first["proxy"] and gated["probe_from"] == first.get("probe_from", 40)
    # a wider gate than the lead, or none, lets the same structure train
    for number, gate in ((42, 15.0), (43, None)):
        kept = run_trial(_spec(prepared, number, lr(1e-4 * (number - 38)), search_cfg={"proxy_gate": gate}))
        assert kept["state"] == "complete" and "stopped" not in kept and kept["curve"], (kept["durations"], kept.get("cache"))
