"""The typed trial record: built in one place, versioned on disk, old runs still open."""

import json
import shutil
from pathlib import Path

import pytest

from autocompress.errors import UserError
from autocompress.objectives import front, objective_values
from autocompress.results.load import read_run
from autocompress.store import RunFolder
from autocompress.trial import RECORD_VERSION, TrialRecord, read_record, read_trials, run_trial

STORED_RUN = Path(__file__).resolve().parent / "data" / "run_before_versions"  # an old run's text files
METRICS = {"accuracy": 91.5, "test_accuracy": 90.25, "latency_ms": 1.25, "size_bytes": 2_000_000, "size_mb": 2.0,
           "params": 500_000, "precision": "int8", "runtime": "onnxruntime", "macs": 1_000_000}


def _measured(number=3, **parts) -> TrialRecord:
    return TrialRecord.measured(number=number, choices={"prune": ["channel_prune", {"ratio": 0.5}]}, started=100.0,
                                host="box", structure_only=False,
                                parts={"metrics": METRICS, "curve": [[1, 80.0], [2, 91.5]],
                                       "durations": {"prune": 1.5}, "artefact": "trials/0003/model.onnx", **parts})


def test_a_record_round_trips_through_trials_jsonl_with_its_version(tmp_path):
    record = _measured(stopped={"stage": "structure", "reason": "size over budget"},
                       cache={"key": "k", "hit": True, "kind": "model", "from_trial": 1, "saved_s": 12.0},
                       plugin_log=["channel_prune: 12 channels removed"])
    record.judge({"latency": -0.5, "accuracy": 0.1})
    RunFolder(tmp_path).append_trial(record)
    line = json.loads((tmp_path / "trials.jsonl").read_text())
    assert line["version"] == RECORD_VERSION
    assert line["metrics"]["latency_ms"] == 1.25 and line["curve"] == [[1, 80.0], [2, 91.5]]  # keys as before
    [back] = read_trials(tmp_path)
    assert back == record
    assert back.metrics.macs == 1_000_000 and back.stopped.stage == "structure" and back.cache.from_trial == 1
    assert back.feasible is False and back.constraints == {"latency": -0.5, "accuracy": 0.1}
    assert back.plugin_log == ["channel_prune: 12 channels removed"]
    assert back.duration_s == pytest.approx(back.finished - 100.0, abs=1e-3)
    assert TrialRecord.from_json(json.dumps(record.to_json()), "attr") == record  # as an Optuna user attr


def test_objectives_and_the_front_read_typed_records_and_plain_dicts_alike():
    fast = _measured(number=1, metrics={**METRICS, "accuracy": 80.0, "latency_ms": 0.5})
    accurate = _measured(number=2)
    dominated = _measured(number=4, metrics={**METRICS, "accuracy": 70.0, "latency_ms": 2.0})
    assert [r.number for r in front([fast, accurate, dominated])] == [2, 1]
    assert objective_values(accurate, ["accuracy", "macs"]) == objective_values(accurate.to_json(), ["accuracy", "macs"])
    assert objective_values(accurate, ["accuracy", "macs"]) == [91.5, 1_000_000.0]


def test_every_record_of_a_stored_benchmark_run_parses():
    raw = [json.loads(line) for line in (STORED_RUN / "trials.jsonl").read_text().splitlines() if line.strip()]
    assert raw and all("version" not in r for r in raw)  # written before records were versioned
    records = {r.number: r for r in read_trials(STORED_RUN)}
    assert sorted(records) == sorted({r["number"] for r in raw})
    for data in raw:
        record = records[data["number"]]
        assert record.version == RECORD_VERSION and record.state == data["state"]
        if data.get("metrics"):
            assert record.metrics.latency_ms == data["metrics"]["latency_ms"]
            assert record.metrics.accuracy == data["metrics"]["accuracy"]
        assert record.to_json().keys() >= data.keys()  # nothing the old record held is lost
    base = read_record(STORED_RUN / "base.json")
    assert base.number == -1 and base.metrics.runtime


def test_an_old_run_opens_for_load_and_report(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(STORED_RUN, run, ignore=shutil.ignore_patterns("trials", "base", "*.db", "cache"))
    info = read_run(run)
    assert info.base is not None and info.base.metrics.latency_ms > 0
    assert set(info.records) and all(isinstance(r, TrialRecord) for r in info.records.values())


def test_a_record_without_a_version_is_upgraded():
    old = {"number": 0, "choices": {}, "state": "fail", "reason": "boom", "started": 1.0, "finished": 2.0,
           "duration_s": 1.0}
    record = TrialRecord.from_json(old, "old")
    assert record.version == RECORD_VERSION and record.structure_only is False and record.reason == "boom"


@pytest.mark.parametrize("change, expected", [
    ({"metrics": {**METRICS, "latency_ms": "fast"}}, "field metrics.latency_ms"),
    ({"state": "exploded"}, "field state"),
    ({"number": None}, "field number"),
    ({"version": 2}, "version 2 was written by a newer autocompress"),
    ({"version": "one"}, "field version"),
])
def test_a_malformed_or_newer_record_is_one_line_naming_the_file_and_field(tmp_path, change, expected):
    good = _measured().to_json()
    (tmp_path / "trials.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(UserError) as err:
        read_trials(tmp_path)
    message = str(err.value)
    assert expected in message and f"{tmp_path / 'trials.jsonl'} line 2" in message
    assert "\n" not in message


def test_a_record_that_is_not_an_object_is_refused():
    with pytest.raises(UserError, match="not a trial record"):
        TrialRecord.from_json("[1, 2]", "x")


def test_show_of_a_run_with_a_malformed_record_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from conftest import run_main

    run = tmp_path / "run"
    shutil.copytree(STORED_RUN, run, ignore=shutil.ignore_patterns("trials", "base", "*.db", "cache"))
    with open(run / "trials.jsonl", "a") as fh:
        fh.write(json.dumps({**_measured(number=99).to_json(), "version": 7}) + "\n")
    code, _, stderr = run_main(monkeypatch, capsys, "show", run)
    assert code == 2
    assert "trial record version 7" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_builder_with_an_unknown_part_names_it():
    with pytest.raises(ValueError, match="field speed"):
        _measured(speed=3)


def test_a_failing_trial_comes_back_as_a_typed_failed_record(tmp_path):
    record = run_trial({"number": 5, "choices": {}, "run_dir": str(tmp_path), "config": {"model": 42}})
    assert record.state == "fail" and record.number == 5 and record.reason
    assert record.version == RECORD_VERSION and record.duration_s is not None and record.metrics is None
    assert (tmp_path / "trials" / "0005" / "error.txt").is_file()


def test_legacy_key_reads_still_work_for_unconverted_code():
    record = _measured(stopped={"stage": "structure", "reason": "r"})
    assert record["metrics"]["latency_ms"] == record.metrics.latency_ms
    assert record.get("probe") is None and "probe" not in record and "stopped" in record
    assert record["stopped"].get("stage") == "structure"
    with pytest.raises(KeyError):
        record["no_such_field"]
