"""Every quantizer on a finished fine-tune (search.sweep, issue 18): a fine-tune is the unit of cost, so once
one finishes its model is quantized with the space's other quantizers and runtimes, with no training.
Real tiny models on digits."""

from __future__ import annotations

import time

import optuna
import pytest
from conftest import write_yaml

from autocompress.config import load_config
from autocompress.search import Search
from autocompress.search.controller import load_resume
from autocompress.trial import TrialRecord, read_trials


@pytest.fixture
def sweep_config(tmp_path, tiny_config_dict):
    space = {"prune": {"none": {}}, "distill": {"logit_kd": {"lr": 0.003}},
             "quantize": {"none": {}, "int8_static": {"calibration": ["percentile", "minmax"],
                                                      "calibration_batches": {"low": 2, "high": 4, "step": 2}}},
             "warm_start": [{"quantize": "none"}]}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "search": {**tiny_config_dict["search"], "trials": 2, "rungs": None}}
    return load_config(write_yaml(tmp_path / "run.yaml", cfg))


def test_a_finished_fine_tune_is_quantized_with_the_other_quantizers_without_training(tmp_path, sweep_config):
    run = tmp_path / "out"
    Search(config=sweep_config, run_dir=run).search()
    first, swept = read_trials(run)
    assert first.state == swept.state == "complete"
    assert first.choices["quantize"][0] == "none" and first.cache.stored and first.swept_from is None
    assert swept.swept_from == 0
    assert swept.choices["quantize"] == ["int8_static", {"calibration": "percentile", "calibration_batches": 2}]
    assert swept.choices["distill"] == first.choices["distill"]  # the same recipe, so the same cached model
    assert swept.cache.hit and swept.cache.from_trial == 0
    assert swept.curve == first.curve  # the fine-tune's curve, not a new one
    assert not any(k.startswith("distill") for k in swept.durations)  # and no training step ran
    assert swept.metrics.precision == "int8"
    assert "sweep: trial 0's fine-tuned model queued with 1" in (run / "run.log").read_text()


def _finished(number: int, accuracy: float, *, index: int | None = 2, stored: bool = True,
              stopped: bool = False) -> TrialRecord:
    parts = {"metrics": {"accuracy": accuracy, "latency_ms": 1.0, "size_bytes": 1000, "size_mb": 0.001,
                         "params": 1, "precision": "fp32", "runtime": "onnxruntime"},
             "cache": {"key": f"k{number}", "hit": not stored, "kind": "model", "stored": stored}}
    if index is not None:
        parts["rung"] = {"index": index, "epochs": [1.0, 3.0, 9.0][index]}
    if stopped:
        parts["stopped"] = {"stage": "distill", "reason": "under the floor"}
    return TrialRecord.measured(number=number, started=time.time(), host=None, structure_only=False, parts=parts,
                                choices={"prune": ["none", {}], "distill": ["logit_kd", {"lr": 0.003, "epochs": 9.0}],
                                         "quantize": ["none", {}]})


INT8_TWO_CALIBRATIONS = {"none": {}, "int8_static": {"calibration": ["percentile", "minmax"]}}


def _prepared(tmp_path, tiny_config_dict, quantizers: dict, **sections) -> Search:
    """A validated search over ``quantizers`` after a 0.003-lr KD fine-tune, rungs [1, 3, 9], its base at 80 %;
    ``sections`` are merged into the config's sections."""
    space = {"prune": {"none": {}}, "distill": {"logit_kd": {"lr": 0.003}}, "quantize": quantizers}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "search": {**tiny_config_dict["search"], "rungs": [1, 3, 9]}}
    for section, values in sections.items():
        cfg[section] = {**cfg[section], **values}
    search = Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=tmp_path / "out")
    search.validate()
    search.run.path.mkdir()
    search.base = _finished(-1, 80.0, index=None)
    return search


@pytest.mark.parametrize("record, expected", [
    (_finished(0, 79.5), 1),                  # the top rung, within twice the allowed drop: swept
    (_finished(1, 79.5, index=1), 1),         # a lower rung over the floor (80 - 1 pp): feasible already, swept
    (_finished(6, 78.5, index=1), 0),         # a lower rung under the floor: its promotion is swept instead
    (_finished(2, 79.5, stored=False), 0),    # read from the cache: a variant, or a repeat, trained nothing
    (_finished(3, 79.5, stopped=True), 0),    # stopped early: no model was kept
    (_finished(4, 77.9), 0),                  # more than twice the allowed drop (2 x 1 pp) under the base
])
def test_a_top_rung_fine_tune_near_the_floor_or_a_lower_one_over_it_is_swept(tmp_path, tiny_config_dict, record, expected):
    search = _prepared(tmp_path, tiny_config_dict, INT8_TWO_CALIBRATIONS, budget={"max_accuracy_drop": 1.0})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert search._sweep(record, None) == expected
    assert search._next_sweep(study) is bool(expected)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == expected
    if expected:
        assert waiting[0].user_attrs["sweep"] == {"from": record.number, "rung": record.rung.index}
        assert search._sweep(record, None) == 0  # the same variant is not queued twice
        variant = search.space.suggest(study.ask(), search.registry)
        assert variant["quantize"][0] == "int8_static" and variant["quantize"][1]["calibration"] == "percentile"
        assert variant["distill"][1]["lr"] == 0.003
    search.config.search.sweep = False
    assert search._sweep(_finished(5, 79.5), None) == 0


def test_with_two_runtimes_every_other_quantizer_on_each_is_queued(tmp_path, tiny_config_dict):
    search = _prepared(tmp_path, tiny_config_dict, {"none": {}, "int8_static": {}, "nncf_int8": {}},
                       device={"runtime": ["onnxruntime", "openvino"]})
    record = _finished(0, 79.5)
    record.choices["runtime"] = ["onnxruntime", {}]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert search._sweep(record, None) == 3
    variants = []
    for _ in range(3):
        assert search._next_sweep(study)
        assert not search._next_sweep(study)  # one at a time: the next waits until this one is asked
        choices = search.space.suggest(study.ask(), search.registry)
        variants.append((choices["runtime"][0], choices["quantize"][0]))
        if choices["quantize"][0] == "nncf_int8":
            assert choices["quantize"][1]["ignore_first_last"] is False  # the most compressing
    # every quantizer on each runtime but the trial's own (none on onnxruntime)
    assert sorted(variants) == [("onnxruntime", "int8_static"), ("openvino", "nncf_int8"), ("openvino", "none")]


def test_a_resumed_search_runs_the_variants_a_stopped_one_had_queued(tmp_path, sweep_config):
    run = tmp_path / "out"
    sweep_config.search.trials = 1  # stops as soon as the fine-tune is measured: its variant is queued, not run
    Search(config=sweep_config, run_dir=run).search()
    assert [r.number for r in read_trials(run)] == [0]
    assert len(optuna.load_study(study_name=sweep_config.search.study_name or run.name,
                                 storage=f"sqlite:///{run / 'study.db'}").trials) == 1  # none left half-asked
    resumed = load_resume(run)
    resumed.search.trials = 2
    Search(config=resumed, run_dir=run).search()
    first, swept = read_trials(run)
    assert swept.swept_from == 0 and swept.choices["quantize"][0] == "int8_static" and swept.cache.hit


def test_a_queued_variant_is_asked_before_a_promotion(tmp_path, tiny_config_dict):
    search = _prepared(tmp_path, tiny_config_dict, INT8_TWO_CALIBRATIONS, budget={"max_accuracy_drop": 1.0})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    first = study.ask()
    search.space.suggest(first, search.registry)
    study.tell(first, [79.0, 1.0, 0.001])
    search.records = {0: _finished(0, 79.0, index=0), 1: _finished(1, 79.5)}  # 0: promotable; 1: finished on top
    assert search._sweep(search.records[1], None) == 1
    search._enqueue_next(study)
    asked = study.ask()
    assert asked.user_attrs.get("sweep") == {"from": 1, "rung": 2} and "promote" not in asked.user_attrs
    search.space.suggest(asked, search.registry)
    study.tell(asked, [79.0, 1.0, 0.001])
    search._enqueue_next(study)  # no variant left: the promotion
    assert study.ask().user_attrs["promote"] == {"from": 0, "rung": 1}
    search._promoted.clear()  # promotable again, but a trial waits: the promotion is decided at its own ask
    study.enqueue_trial({})
    search._enqueue_next(study)
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_lower_rung_variant_is_not_promoted_and_the_promotion_is_swept_again(tmp_path, tiny_config_dict):
    search = _prepared(tmp_path, tiny_config_dict, INT8_TWO_CALIBRATIONS, budget={"max_accuracy_drop": 1.0})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    source = _finished(0, 79.5, index=0)
    assert search._sweep(source, None) == 1 and search._next_sweep(study)
    asked = study.ask()
    assert asked.user_attrs["sweep"] == {"from": 0, "rung": 0}
    search.space.suggest(asked, search.registry)
    study.tell(asked, [79.6, 1.0, 0.001])
    variant = _finished(1, 79.6, index=0, stored=False)
    variant.swept_from = 0
    search.records = {0: source, 1: variant}
    # the variant reads more accurate than its source but shares its fine-tune: the source goes up
    assert search._promotable() == (source, 1)
    # the source's promotion, over the floor at the top rung, is swept with the same quantizer again:
    # Optuna's skip_if_exists would skip it (the same parameters; the rung is not one of them)
    assert search._sweep(_finished(2, 79.8, index=2), None) == 1
    assert search._next_sweep(study)
    assert study.ask().user_attrs["sweep"] == {"from": 2, "rung": 2}
    assert search._sweep(_finished(2, 79.8, index=2), None) == 0  # once per rung


def test_a_variant_whose_structure_already_broke_the_size_budget_is_not_queued_again(tmp_path, tiny_config_dict):
    search = _prepared(tmp_path, tiny_config_dict, {"none": {}, "int8_static": {}, "nncf_int8": {}},
                       device={"runtime": ["onnxruntime", "openvino"]}, budget={"max_size_mb": 0.0015})
    record = _finished(0, 79.5)
    record.choices["runtime"] = ["onnxruntime", {}]

    def fp32(number: int, runtime: str, prune: list) -> TrialRecord:
        over = _finished(number, 70.0, index=0)  # another fine-tune, another rung: size does not follow training
        over.choices.update(runtime=[runtime, {}], prune=prune)
        over.metrics.size_mb, over.metrics.runtime = 0.002, runtime
        return over

    # an fp32 artefact over the size budget, of another structure (pruned): nothing of this one is known
    search.records = {7: fp32(7, "openvino", ["channel_prune", {"ratio": 0.5}])}
    assert search._sweep(record, None) == 3
    search._swept.clear()
    search._sweeps.clear()
    # the same structure in fp32 on OpenVINO was over it: that variant is left out, the int8 ones go on
    search.records[8] = fp32(8, "openvino", ["none", {}])
    assert search._sweep(record, None) == 2
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    queued = []
    while search._next_sweep(study):
        choices = search.space.suggest(study.ask(), search.registry)
        queued.append((choices["runtime"][0], choices["quantize"][0]))
    assert sorted(queued) == [("onnxruntime", "int8_static"), ("openvino", "nncf_int8")]
