"""A plugin from outside the shipped set (docs/examples/svd_lowrank.py), copied with its test to a folder
outside the project as an author would keep them: its own test passes there, and a real search with
``--plugins-dir`` that folder composes it with a shipped quantizer."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_main, write_yaml



@pytest.fixture
def outside(tmp_path):
    """The example plugin and its test, alone in a folder outside the project."""
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    for name in ("svd_lowrank.py", "test_svd_lowrank.py"):
        shutil.copy(ROOT / "docs" / "examples" / name, folder / name)
    return folder


def test_the_example_plugins_own_test_passes(outside):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_svd_lowrank.py"],
                          cwd=outside, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1] and "failed" not in proc.stdout.splitlines()[-1]


def test_a_search_composes_the_outside_plugin_with_a_shipped_quantizer(tmp_path, outside, tiny_config_dict,
                                                                       monkeypatch, capsys):
    space = {"prune": {"svd_lowrank": {"rank_ratio": [0.25, 0.5]}},
             "quantize": {"int8_dynamic": {"ops": "matmul_conv"}}}
    config = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space))}
    config["model"] = {**config["model"], "train_epochs": 1}
    config["search"] = {**config["search"], "trials": 2}
    run = tmp_path / "run"
    code, out, err = run_main(monkeypatch, capsys, "search", write_yaml(tmp_path / "run.yaml", config),
                              "--plugins-dir", outside, "--out", run, "-q")
    assert code == 0, out + err
    said = " ".join(out.split())
    assert f"plugins: 1 files from {outside} (svd_lowrank.py); 11 files from " in said, said
    assert "int8_dynamic.py" in said

    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    base = json.loads((run / "base.json").read_text())["metrics"]
    assert len(records) == 2
    for record in records:
        assert record["state"] == "complete", record["reason"]
        assert record["choices"]["prune"][0] == "svd_lowrank" and record["choices"]["quantize"][0] == "int8_dynamic"
        metrics = record["metrics"]
        assert metrics["precision"] == "int8" and metrics["runtime"] == "onnxruntime"
        assert metrics["params"] < base["params"], "the factorised model has fewer parameters"
        assert len(record["plugin_log"]) == 1 and record["plugin_log"][0].startswith("svd_lowrank: ")
        assert " layers factorised, " in record["plugin_log"][0]
        log = (run / "trials" / f"{record['number']:04d}" / "log.txt").read_text()
        assert record["plugin_log"][0] in log
