"""End to end: a real (tiny) search writes a consistent run folder whose front reloads exactly."""

import json
from pathlib import Path

import optuna
import pytest

from autocompress.config.schema import load_config
from autocompress.search.controller import Search
from autocompress.errors import UserError
from autocompress.plugin.contract import Artefact
from autocompress.measure.runtimes import get_runtime
from autocompress.data import load_data
from autocompress.objectives import latency_ratio
from autocompress.measure.accuracy import top1
from conftest import FAILING_PLUGIN, write_yaml

SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.3}}},
    "distill": {"none": {}, "logit_kd": {"epochs": 1}},
    "quantize": {"none": {}, "int8_static": {"calibration_batches": 2}},
    "warm_start": [
        {"quantize": "int8_static"},
        {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": "logit_kd"},
    ],
}

def _config(tmp_path, tiny_config_dict, space=SPACE, **search):
    cfg = dict(tiny_config_dict)
    cfg["search"] = {**cfg["search"], **search}
    cfg["search_space"] = str(write_yaml(tmp_path / "space.yaml", space))
    return load_config(write_yaml(tmp_path / "run.yaml", cfg))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")

    cfg = {
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 3, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 50.0},
        "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
        "search": {"sampler": "tpe", "trials": 5, "timeout": None, "seed": 0, "early_stop": "none",
                   "proxy_gate": None},
    }
    config = _config(tmp, cfg)
    search = Search(config=config, run_dir=tmp / "out")
    pareto = search.search()
    return tmp / "out", config, pareto


def test_run_folder_holds_every_file(finished_run):
    run, _, _ = finished_run
    for name in ("config.yaml", "machine.json", "base.json", "trials.jsonl", "pareto.json", "study.db", "run.log"):
        assert (run / name).is_file(), name
    lines = (run / "trials.jsonl").read_text().splitlines()
    assert [json.loads(l)["number"] for l in lines] == [0, 1, 2, 3, 4]
    machine = json.loads((run / "machine.json").read_text())
    assert machine["threads"] == 1 and "versions" in machine


def test_warm_start_configurations_run_first(finished_run):
    run, _, _ = finished_run
    records = [json.loads(l) for l in (run / "trials.jsonl").read_text().splitlines()]
    assert records[0]["choices"]["quantize"][0] == "int8_static" and records[0]["choices"]["prune"][0] == "none"
    assert records[1]["choices"]["prune"][0] == "channel_prune"
    assert records[1]["choices"]["prune"][1]["ratio"] == 0.6


def test_records_hold_real_measurements(finished_run):
    run, _, _ = finished_run
    base = json.loads((run / "base.json").read_text())
    records = [json.loads(l) for l in (run / "trials.jsonl").read_text().splitlines()]
    int8 = records[0]
    assert int8["metrics"]["precision"] == "int8"
    assert base["metrics"]["size_bytes"] / int8["metrics"]["size_bytes"] > 3.0
    pruned = records[1]
    assert pruned["metrics"]["params"] < base["metrics"]["params"]
    for r in records:
        lat = r["latency"]
        assert lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] and len(lat["round_medians_ms"]) == 2
        assert r["base_latency_same_window"]["calls"] == 20


def test_front_speed_ups_are_over_the_base_timed_beside_each_model(finished_run):
    _, _, pareto = finished_run
    assert pareto["front"]
    for row in pareto["front"]:
        # not the base's figure from the start of the run over the model's from its own window
        assert row["vs_base"]["latency_x"] == round(1.0 / latency_ratio(row["metrics"]), 3)
        assert row["vs_base"]["size_x"] == round(pareto["base"]["size_mb"] / row["metrics"]["size_mb"], 3)


def test_each_structure_stands_on_the_front_once_by_its_most_accurate_artefact(finished_run):
    run, _, pareto = finished_run
    records = [json.loads(l) for l in (run / "trials.jsonl").read_text().splitlines()]
    done = [r for r in records if r["state"] == "complete" and r["feasible"]]
    assert all(r["metrics"]["latency_key"] for r in done)
    keys = [row["metrics"]["latency_key"] for row in pareto["front"]]
    assert len(keys) == len(set(keys))
    for row in pareto["front"]:
        alike = [r["metrics"]["accuracy"] for r in done if r["metrics"]["latency_key"] == row["metrics"]["latency_key"]]
        assert row["metrics"]["accuracy"] == max(alike)


def test_front_is_non_dominated_and_its_artefacts_reload_exactly(finished_run):
    run, config, pareto = finished_run
    assert pareto["front"], "empty front"
    data = load_data(config.data, config.model.img_size)
    # latency as the ratio to the base timed beside each model, the figure the front compares
    values = [(r["metrics"]["accuracy"], -latency_ratio(r["metrics"]), -r["metrics"]["size_mb"]) for r in pareto["front"]]
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            assert i == j or not (all(x >= y for x, y in zip(b, a)) and b != a)
    for row in pareto["front"]:
        m = row["metrics"]
        art = Artefact(run / row["artefact"], m["runtime"], m["precision"])
        assert art.size_bytes() == m["size_bytes"]
        predict = get_runtime(m["runtime"]).load(art, threads=1)
        assert top1(predict, data.val, batch_size=32) == pytest.approx(m["accuracy"], abs=1e-3)
        assert top1(predict, data.test, batch_size=32) == pytest.approx(m["test_accuracy"], abs=1e-3)


def test_dominated_trials_keep_no_artefact(finished_run):
    run, _, pareto = finished_run
    on_front = {r["number"] for r in pareto["front"]}
    for folder in (run / "trials").iterdir():
        has_model = any(folder.glob("model*"))
        assert has_model == (int(folder.name) in on_front), folder


def test_study_is_a_plain_optuna_study(finished_run):
    run, _, _ = finished_run
    study = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    assert study.metric_names == ["accuracy", "latency_ms", "size_mb"]
    assert len(study.trials) == 5
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    records = {json.loads(line)["number"]: json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()}
    for t in done:  # the budget (max_accuracy_drop 50) is told to Optuna as a relative violation
        acc = records[t.number]["metrics"]["accuracy"]
        floor = max(json.loads((run / "base.json").read_text())["metrics"]["accuracy"] - 50.0, 1e-6)
        assert t.constraints == {"accuracy": pytest.approx((floor - acc) / floor, abs=1e-5)}


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_config_dict):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "explode.py").write_text(FAILING_PLUGIN)
    project = Path(__file__).resolve().parent.parent / "plugins"
    for name in ("int8_static.py",):
        (plugins / name).write_text((project / name).read_text())
    space = {"distill": {"explode": {}}, "quantize": {"none": {}, "int8_static": {"calibration_batches": 1}}}
    config = _config(tmp_path, tiny_config_dict, space=space, trials=2)
    config.plugins_dir = plugins
    pareto = Search(config=config, run_dir=tmp_path / "out").search()
    records = [json.loads(l) for l in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()]
    assert [r["state"] for r in records] == ["fail", "fail"]
    assert records[0]["reason"] == "RuntimeError: kaboom in apply"
    assert "kaboom" in (tmp_path / "out" / "trials" / "0000" / "error.txt").read_text()
    assert pareto["trials_failed"] == 2 and pareto["front"] == []


def test_an_impossible_budget_is_refused_before_searching(tmp_path, tiny_config_dict):
    tiny_config_dict["budget"] = {"max_size_mb": 0.001}
    config = _config(tmp_path, tiny_config_dict)
    with pytest.raises(UserError, match=r"budget.max_size_mb: 0.001 MB cannot be met: the most compressed configuration "
                                        r"\(prune=channel_prune, quantize=int8_static\) is"):
        Search(config=config, run_dir=tmp_path / "out").search()
    assert not (tmp_path / "out" / "trials.jsonl").exists()


def test_resume_continues_the_study_without_rerunning(tmp_path, tiny_config_dict):
    config = _config(tmp_path, tiny_config_dict, trials=2)
    Search(config=config, run_dir=tmp_path / "out").search()
    before = (tmp_path / "out" / "trials.jsonl").read_text().splitlines()
    config.search.trials = 3
    Search(config=config, run_dir=tmp_path / "out").search()
    after = (tmp_path / "out" / "trials.jsonl").read_text().splitlines()
    assert after[:2] == before and [json.loads(l)["number"] for l in after] == [0, 1, 2]
    assert "reusing cached weights" in (tmp_path / "out" / "run.log").read_text()
