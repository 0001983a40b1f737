"""report, show, export and load on one tiny finished run (real search, real runtimes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import autocompress
from autocompress.cli import app
from autocompress.config.schema import PROJECT_ROOT, RunConfig
from autocompress.data import load_data
from autocompress.errors import UserError
from conftest import FAILING_PLUGIN, run_main

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 4-trial run whose trials are fixed by warm start.

    0: no compression (over the size budget: infeasible), 1: int8 (front), 2: pruned + distilled fp32
    (smallest, so always on the front), 3: a plugin that raises (failed).
    """
    root = tmp_path_factory.mktemp("inspect")
    plugins = root / "plugins"
    plugins.mkdir()
    for name in ("channel_prune", "int8_static", "logit_kd"):
        shutil.copy(PROJECT_ROOT / "plugins" / f"{name}.py", plugins / f"{name}.py")
    (plugins / "explode.py").write_text(FAILING_PLUGIN)
    space = {
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.3}}},
        "distill": {"none": {}, "explode": {}, "logit_kd": {"epochs": 3, "lr": 0.003}},
        "quantize": {"none": {}, "int8_static": {"calibration_batches": 2}},
        "warm_start": [{}, {"quantize": "int8_static"},
                       {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": "logit_kd"},
                       {"distill": "explode"}],
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    # tests/conftest.py's tiny_config_dict, with a base trained long enough to be worth compressing
    config = {
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 4, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": 1.0, "max_accuracy_drop": None},
        "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
        "search": {"sampler": "random", "trials": 4, "timeout": None, "seed": 0, "proxy_gate": None},
        "search_space": str(root / "space.yaml"), "plugins_dir": str(plugins),
    }
    from autocompress.search.controller import Search

    out = root / "run"
    Search(config=RunConfig.model_validate(config), run_dir=out).search()
    return out


def _front(run: Path) -> dict[str, int]:
    pareto = json.loads((run / "pareto.json").read_text())
    return {r["metrics"]["precision"]: r["number"] for r in pareto["front"]}


def _records(run: Path) -> dict[int, dict]:
    return {r["number"]: r for r in map(json.loads, (run / "trials.jsonl").read_text().splitlines())}


_cli = run_main


def test_the_run_has_int8_and_float_models_on_the_front_and_a_failed_and_an_infeasible_trial(run):
    front, records = _front(run), _records(run)
    assert set(front) == {"int8", "fp32"}
    assert records[3]["state"] == "fail" and records[0]["feasible"] is False
    # held-out test accuracy is evaluated only where a trial can be on the front (within budget)
    assert records[0]["metrics"]["test_accuracy"] is None and records[0]["metrics"]["accuracy"] > 0
    assert all(records[n]["metrics"]["test_accuracy"] > 0 for n in front.values())
    assert (run / "data.json").is_file()
    assert (run / f"trials/{front['fp32']:04d}/model.module.safetensors").is_file()
    assert not (run / f"trials/{front['int8']:04d}/model.module.safetensors").exists()


def test_stored_study_loads_with_plain_optuna(run):
    import optuna

    study = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    assert study.metric_names == ["accuracy", "latency_ms", "size_mb"]
    assert len(study.trials) == 4


def test_optuna_dashboard_opens_the_storage(run):
    import io
    import sys

    dashboard = pytest.importorskip("optuna_dashboard")
    from optuna_dashboard._storage_url import get_storage

    app = dashboard.wsgi(get_storage(f"sqlite:///{run / 'study.db'}"))
    status = []
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "SERVER_NAME": "t", "SERVER_PORT": "80",
           "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "QUERY_STRING": ""}
    body = b"".join(app(env, lambda code, headers, exc=None: status.append(code)))
    assert status == ["200 OK"]
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["directions"] == ["maximize", "minimize", "minimize"]


def test_report_writes_offline_html_and_png(run):
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    for text in ("Pareto front: 2-D projections", "accuracy vs latency", "accuracy vs size", "size vs latency",
                 "Pareto front: 3-D view", '"scatter3d"', "base model", "infeasible (over budget)",
                 "Failed trials", "RuntimeError: kaboom in apply", "Hypervolume of the feasible front", "over wall time",
                 "2 × base", "Parameter importances", "optuna-dashboard sqlite:///", "int8_static",
                 "test not evaluated: over budget"):
        assert text in page, text
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched: plotly.js is inline
    assert len(page) > 3_000_000
    png = run / "front.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 800 and height > 500


def test_hypervolume_is_exact_and_never_falls(run):
    from optuna._hypervolume import compute_hypervolume

    from autocompress.results.report import hypervolume, hypervolume_history, read

    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, size=(12, 3))
    assert hypervolume([tuple(p) for p in points], [1.0, 1.0, 1.0]) == pytest.approx(
        compute_hypervolume(points, np.ones(3)), rel=1e-9)
    history = hypervolume_history(read(run))
    by_number = [h["by_number"] for h in history]
    assert by_number == sorted(by_number) and 0 < by_number[-1] < 1


@pytest.mark.parametrize("precision,fmt", [("int8", "onnx"), ("fp32", "onnx"), ("fp32", "torchscript"),
                                           ("fp32", "pt2")])
def test_export_reproduces_the_recorded_accuracy(run, tmp_path, precision, fmt):
    from autocompress.results.export import export

    trial = _front(run)[precision]
    result = export(run, trial, fmt, tmp_path)
    assert result.path.parent == tmp_path and result.path.is_file()
    recorded = _records(run)[trial]["metrics"]
    assert result.measured["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.1)
    assert result.measured["test_accuracy"] == pytest.approx(recorded["test_accuracy"], abs=0.1)
    assert result.measured["latency_ms"] > 0
    # the base was timed beside the written file, as the search timed it beside the trial
    assert result.comparable and result.measured["base_latency_ms"] > 0
    assert result.measured["latency_vs_base"] == pytest.approx(
        result.measured["latency_ms"] / result.measured["base_latency_ms"], abs=1e-4)


def test_export_cli_prints_both_figures(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, _ = _cli(monkeypatch, capsys, "export", run, "--trial", _front(run)["int8"], "--format", "onnx",
                           "--out", out)
    assert code == 0 and out.is_file()
    assert "in search" in stdout and "exported" in stdout and "val top-1" in stdout and "latency" in stdout
    searched = _records(run)[_front(run)["int8"]]["metrics"]
    ratio = searched.get("latency_vs_base_pooled") or searched["latency_vs_base"]
    row = next(line for line in stdout.splitlines() if "timed beside" in line)
    mine, theirs = (float(x) for x in re.findall(r"(\d+\.\d+)x", row))
    assert mine == pytest.approx(ratio, abs=1e-3) and theirs > 0
    # figures of two windows get no change column: the same file has read 0.53x-0.77x the search's ratio
    ms_row = next(line for line in stdout.splitlines() if "latency (batch" in line)
    assert not re.search(r"\d+\.\d+x", ms_row)
    assert "not checked" in stdout and "autocompress retime" in stdout


def test_export_refuses_a_base_whose_bytes_changed_before_writing_anything(run, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports", "report.html"))
    base = json.loads((copy / "base.json").read_text())
    with open(copy / base["artefact"], "ab") as fh:
        fh.write(b"\0")
    code, _, err = _cli(monkeypatch, capsys, "export", copy, "--trial", _front(run)["int8"], "--format", "onnx")
    assert code == 2 and "the base" in err and "SHA-256" in err
    assert not (copy / "exports").exists()


def test_export_mismatch_exits_1_and_removes_the_file(run, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports", "report.html"))
    trial = _front(run)["int8"]
    lines = []
    for line in (copy / "trials.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["number"] == trial:
            record["metrics"]["accuracy"] -= 5.0
        lines.append(json.dumps(record))
    (copy / "trials.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = _cli(monkeypatch, capsys, "export", copy, "--trial", trial, "--format", "onnx")
    assert code == 1
    assert "does not reproduce" in err and "val top-1" in err
    assert not (copy / "exports" / f"trial-{trial:04d}.onnx").exists()


@pytest.mark.parametrize("case", ["missing run", "no such trial", "failed trial", "not on front", "unknown format",
                                  "int8 to torchscript", "pt2 without .pt2"])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, monkeypatch, capsys, case):
    front = _front(run)
    args = {
        "missing run": [tmp_path / "nope", "--trial", 1, "--format", "onnx"],
        "no such trial": [run, "--trial", 99, "--format", "onnx"],
        "failed trial": [run, "--trial", 3, "--format", "onnx"],
        "not on front": [run, "--trial", 0, "--format", "onnx"],
        "unknown format": [run, "--trial", front["fp32"], "--format", "tflite"],
        "int8 to torchscript": [run, "--trial", front["int8"], "--format", "torchscript"],
        "pt2 without .pt2": [run, "--trial", front["fp32"], "--format", "pt2", "--out", tmp_path / "m.pt"],
    }[case]
    code, _, err = _cli(monkeypatch, capsys, "export", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    expected = {"missing run": "does not exist", "no such trial": "no trial 99", "failed trial": "failed",
                "not on front": "not on the Pareto front", "unknown format": "onnx, torchscript, pt2",
                "int8 to torchscript": "onnx only", "pt2 without .pt2": "must end in .pt2"}[case]
    assert expected in err


def test_entry_point_exit_code_for_a_trial_not_on_the_front(run):
    done = subprocess.run([sys.executable, "-m", "autocompress.cli", "export", str(run), "--trial", "0",
                           "--format", "onnx"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "not on the Pareto front" in done.stderr


def test_report_of_a_missing_run_folder_is_a_user_error(tmp_path, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "report", tmp_path / "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_load_returns_ready_models_with_metrics_and_preprocessing(run):
    import onnxruntime

    config = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    data = load_data(config.data, config.model.img_size)
    records = _records(run)

    int8 = autocompress.load(run, trial=_front(run)["int8"])
    assert isinstance(int8.model, onnxruntime.InferenceSession)
    assert int8.preprocessing["img_size"] == 32
    assert int8.preprocessing["mean"] == list(data.mean) and int8.preprocessing["std"] == list(data.std)
    assert int8.metrics == records[int8.trial]["metrics"]
    # raw uint8 images in, logits out: the recorded test top-1 is reproduced
    logits = int8.predict(data.test.images)
    accuracy = 100.0 * float((logits.argmax(1) == data.test.labels).float().mean())
    assert accuracy == pytest.approx(int8.metrics["test_accuracy"], abs=0.1)

    fp32 = autocompress.load(run, trial=_front(run)["fp32"])
    assert isinstance(fp32.model, torch.nn.Module) and not fp32.model.training
    inputs, labels = next(data.val.batches(len(data.val)))
    accuracy = 100.0 * float((fp32.predict(inputs).argmax(1) == labels).float().mean())
    assert accuracy == pytest.approx(fp32.metrics["accuracy"], abs=0.1)
    assert fp32.predict(data.val.images[0]).shape == (1, 10)  # one uint8 image, no batch axis

    assert autocompress.load(run).trial == json.loads((run / "pareto.json").read_text())["front"][0]["number"]
    with pytest.raises(UserError, match="not on the Pareto front"):
        autocompress.load(run, trial=0)


def test_show_filters_and_counts(run):
    runner = CliRunner()
    result = runner.invoke(app, ["show", str(run), "--max-size", "0.3MB"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 shown" in result.output and "1 failed" in result.output and "1 infeasible" in result.output
    assert "channel_prune(ratio=0.6" in result.output and "int8_static" not in result.output
    result = runner.invoke(app, ["show", str(run), "--sort", "size"])
    assert result.exit_code == 0 and "2 of 2 shown" in result.output
    assert result.output.index("channel_prune") < result.output.index("int8_static")
    assert "base" in result.output and "Δ top-1" in result.output


@pytest.mark.parametrize("case", ["under a file", "a file without an extension"])
def test_export_out_that_cannot_be_written_is_one_line_and_keeps_the_file(run, tmp_path, monkeypatch, capsys, case):
    (tmp_path / "notes").write_text("mine")
    out, expected = {
        "under a file": (tmp_path / "notes" / "model.onnx",
                         f"--out: cannot create {tmp_path / 'notes' / 'model.onnx'}: {tmp_path / 'notes'} is a file, "
                         "not a folder"),
        "a file without an extension": (tmp_path / "notes",
                                        f"--out: {tmp_path / 'notes'} is a file without an extension; name the file "
                                        f"with one (e.g. {tmp_path / 'notes'}.onnx) or a folder"),
    }[case]
    code, _, err = _cli(monkeypatch, capsys, "export", run, "--trial", _front(run)["fp32"], "--format", "onnx",
                        "--out", out)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: {expected}"
    assert (tmp_path / "notes").read_text() == "mine"


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports", "report.html", "retime.json"))
    return copy


def test_retime_times_the_base_and_the_whole_front_together_and_show_adds_it(run, tmp_path, monkeypatch, capsys):
    from autocompress.results import front_table

    copy = _copy(run, tmp_path)
    assert "retimed speed-up" not in [c.header for c in front_table(copy).columns]
    code, out, _ = _cli(monkeypatch, capsys, "retime", copy, "--rounds", 3)
    assert code == 0 and "paired vs base" in out
    data = json.loads((copy / "retime.json").read_text())
    front = sorted(_front(run).values())
    assert [row["trial"] for row in data["rows"]] == [None, *front]
    assert data["settings"]["rounds"] == 3 and data["front"] == front
    base, *models = data["rows"]
    assert base["vs_base"] == 1.0 and base["paired_vs_base"] == 1.0
    records = _records(run)
    for row in models:
        assert row["latency_ms"] > 0
        assert row["paired_p25"] <= row["paired_vs_base"] <= row["paired_p75"]
        assert row["in_search_vs_base"] == records[row["trial"]]["latency_vs_base"]
    columns = {c.header: list(c.cells) for c in front_table(copy).columns}
    assert columns["retimed speed-up"][0] == "1.00x"  # the base row
    for cell, row in zip(columns["retimed speed-up"][1:], sorted(models, key=lambda r: -records[r["trial"]]["metrics"]["accuracy"])):
        assert cell.startswith(f"{1 / row['paired_vs_base']:.2f}x [")
    # a front that changed since (here: another trial list) makes the figures stale: show leaves them out
    data["front"] = front[:1]
    (copy / "retime.json").write_text(json.dumps(data))
    assert "retimed speed-up" not in [c.header for c in front_table(copy).columns]


@pytest.mark.parametrize("case", ["tampered artefact", "one round", "not a run folder"])
def test_retime_bad_input_is_one_line_and_exit_2(run, tmp_path, monkeypatch, capsys, case):
    copy = _copy(run, tmp_path)
    trial = _front(run)["int8"]
    args = [copy]
    if case == "tampered artefact":
        artefact = copy / _records(run)[trial]["artefact"]
        artefact.write_bytes(artefact.read_bytes()[:-16] + b"\0" * 16)
    elif case == "one round":
        args += ["--rounds", 1]
    else:
        args = [tmp_path / "nope"]
    code, _, err = _cli(monkeypatch, capsys, "retime", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    expected = {"tampered artefact": f"trial {trial}: {copy}", "one round": "--rounds",
                "not a run folder": "does not exist"}[case]
    assert expected in err and (case != "tampered artefact" or "does not match the SHA-256" in err)
    assert not (copy / "retime.json").exists()
