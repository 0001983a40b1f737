"""The command line: bad input gives one clear line and exit code 2, never a traceback."""

import os
import subprocess
import sys

import pytest

from conftest import write_yaml


def run_cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("config,fragments", [
    ({"model": {"name": "resnet_18"}}, ["model.name: unknown timm model 'resnet_18'", "did you mean"]),
    ({"model": {"checkpoint": "/nonexistent/w.pth"}}, ["model.checkpoint: file not found: /nonexistent/w.pth"]),
    ({"data": {"source": "imagefolder", "path": "/nonexistent/imgs"}}, ["data.path: folder not found"]),
    ({"budget": {"max_accuracy_drop": -1}}, ["budget.max_accuracy_drop", "greater than or equal to 0"]),
    ({"search": {"trials": 0}}, ["search.trials", "greater than or equal to 1"]),
    ({"search_space": "/nonexistent/space.yaml"}, ["search_space: file not found"]),
])
def test_bad_config_fields(tmp_path, config, fragments):
    assert_one_line_error(run_cli("search", write_yaml(tmp_path / "c.yaml", config), "--out", tmp_path / "o"), *fragments)


def test_image_folder_without_images(tmp_path):
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("no image")
    config = write_yaml(tmp_path / "c.yaml", {"data": {"source": "imagefolder", "path": str(tmp_path / "imgs")}})
    assert_one_line_error(run_cli("search", config), "holds no images")


def test_unknown_plugin_in_the_search_space(tmp_path):
    space = write_yaml(tmp_path / "s.yaml", {"prune": {"none": {}, "magnitude_magic": {}}})
    assert_one_line_error(run_cli("search", "--search-space", space, "--out", tmp_path / "o"),
                          "unknown plugin 'magnitude_magic'", "known prune plugins:")


def test_bad_flags(tmp_path):
    assert_one_line_error(run_cli("search", "--timeout", "tomorrow", "--out", tmp_path / "o"), "search.timeout")
    assert_one_line_error(run_cli("search", tmp_path / "missing.yaml"), "config: file not found")
    assert_one_line_error(run_cli("show", tmp_path), "is not a run folder")
    assert_one_line_error(run_cli("search", "--resume", tmp_path), "--resume", "not a run folder")


def test_impossible_budget_is_refused_before_the_search(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {
        "model": {"name": "test_resnet", "train_epochs": 1},
        "data": {"max_samples": 200},
        "device": {"threads": 1, "warmup": 2, "repeats": 5, "rounds": 1},
        "budget": {"max_size_mb": 0.0001},
    })
    result = run_cli("search", config, "--out", tmp_path / "o")
    assert_one_line_error(result, "budget.max_size_mb: 0.0001 MB cannot be met", "(base ")
    assert not (tmp_path / "o" / "trials.jsonl").exists()


def test_plugins_lists_name_stage_and_parameters():
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    for text in ("channel_prune", "prune", "logit_kd", "distill", "int8_static", "quantize", "ratio", "temperature"):
        assert text in result.stdout


def test_search_then_show(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {
        "model": {"name": "test_resnet", "train_epochs": 2, "train_lr": 0.01},
        "data": {"max_samples": 300},
        "device": {"threads": 1, "warmup": 2, "repeats": 5, "rounds": 2},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 80},
        "search": {"trials": 2},
    })
    result = run_cli("search", config, "--out", tmp_path / "run", "--trials", "2", "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Results: {tmp_path / 'run'}" in result.stdout.replace("\n", "")
    assert "Traceback" not in result.stderr
    shown = run_cli("show", tmp_path / "run", "--sort", "size")
    assert shown.returncode == 0 and "base" in shown.stdout and "Pareto front" in shown.stdout
    again = run_cli("search", config, "--out", tmp_path / "run")
    assert_one_line_error(again, "already holds a run; use --resume")


# --- issue 16: odd input, one line, nothing lost ---

TINY = {
    "model": {"name": "test_resnet", "train_epochs": 1},
    "data": {"max_samples": 200},
    "device": {"threads": 1, "warmup": 2, "repeats": 5, "rounds": 1},
    "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None},
    "search": {"trials": 1},
}


def _png_folder(root, per_class=3, classes=("cat", "dog"), splits=("train", "val")):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_out_that_names_a_file_is_one_line_and_the_file_is_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    config = write_yaml(tmp_path / "c.yaml", TINY)
    assert_one_line_error(run_cli("search", config, "--out", tmp_path / "notes.txt"),
                          f"--out: {tmp_path / 'notes.txt'} is a file, not a folder")
    assert_one_line_error(run_cli("search", config, "--out", tmp_path / "notes.txt" / "run"),
                          f"--out: cannot create {tmp_path / 'notes.txt' / 'run'}: {tmp_path / 'notes.txt'} is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_that_holds_other_files_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    result = run_cli("search", write_yaml(tmp_path / "c.yaml", TINY), "--out", tmp_path / "mine")
    assert_one_line_error(result, "already holds files (thesis.tex) and is not a run folder")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def test_image_folder_whose_split_is_all_unreadable_names_the_folder(tmp_path):
    root = _png_folder(tmp_path / "imgs")
    for png in (root / "val").rglob("*.png"):
        png.write_bytes(b"not a png")
    config = write_yaml(tmp_path / "c.yaml", {**TINY, "data": {"source": "imagefolder", "path": str(root)}})
    result = run_cli("search", config, "--out", tmp_path / "o")
    assert_one_line_error(result, f"data.path: none of the 6 images in {root / 'val'} could be read")
    assert not (tmp_path / "o").exists()


def test_checkpoint_that_does_not_fit_names_the_keys_before_any_work(tmp_path):
    import timm
    import torch

    state = timm.create_model("test_resnet", num_classes=10).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")} | {"head.w": torch.zeros(2)}
    torch.save(state, tmp_path / "w.pth")
    config = write_yaml(tmp_path / "c.yaml", {**TINY, "model": {**TINY["model"], "checkpoint": str(tmp_path / "w.pth")}})
    result = run_cli("search", config, "--out", tmp_path / "o")
    assert_one_line_error(result, f"model.checkpoint: {tmp_path / 'w.pth'} does not fit test_resnet (10 classes): "
                                  "missing 2 keys (fc.weight, fc.bias); unexpected 1 key (head.w)")
    assert not (tmp_path / "o").exists()


def test_warm_start_value_out_of_range_stops_before_any_work(tmp_path):
    space = write_yaml(tmp_path / "s.yaml", {
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.8, "step": 0.1}}},
        "warm_start": [{"prune": {"channel_prune": {"ratio": 5.0}}}],
    })
    result = run_cli("search", write_yaml(tmp_path / "c.yaml", TINY), "--search-space", space, "--out", tmp_path / "o")
    assert_one_line_error(result, "search_space.warm_start[0].prune.channel_prune.ratio: 5.0 is outside what "
                                  "channel_prune accepts", "the search space allows 0.3 to 0.8 in steps of 0.1")
    assert not (tmp_path / "o").exists()
