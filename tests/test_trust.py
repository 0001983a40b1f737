"""A run folder is data: a received one runs no code through any entry point.

A finished run gets a payload planted in every file a loader could read (every binary file is
replaced by a pickle whose unpickling creates a marker file, ``.pt2`` archives carry it inside,
the pickles an older version kept are added) and its ``config.yaml`` names a plugins folder whose
import creates the marker too. The records' hashes are updated to the planted bytes, as a sender
would. Then show, report, export (every front trial, every format), ``autocompress.load`` and
``search --resume`` run on it: the marker is never created, and each ends in at most one line.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import autocompress
from autocompress.config.schema import PROJECT_ROOT, RunConfig
from autocompress.errors import UserError
from autocompress.store.safe_io import load_exported, sha256_file
from conftest import run_main

TEXT = {".json", ".jsonl", ".yaml", ".log", ".html", ".png", ".md", ".db", ".db-wal", ".db-shm"}


class Payload:
    """Unpickling it creates the marker file (``builtins.open(marker, "w")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": Payload(marker)}, buffer)
    return buffer.getvalue()


def plant_pt2(path: Path, marker: Path) -> None:
    """A ``.pt2`` whose weight, sample inputs and a custom constant are pickled payloads."""
    with zipfile.ZipFile(path) as src:
        entries = {name: src.read(name) for name in src.namelist()}
    evil = payload_bytes(marker)
    for name in list(entries):
        if name.endswith("model_weights_config.json"):
            config = json.loads(entries[name])
            first = next(iter(config["config"]))
            config["config"][first].update(use_pickle=True)
            entries[name] = json.dumps(config).encode()
            entries[name.replace("model_weights_config.json", config["config"][first]["path_name"])] = evil
        elif "/sample_inputs/" in name:
            entries[name] = evil
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run on two runtimes: fp32 and int8 ONNX, a pruned fp32 module, a pruned fp32 ``.pt2``."""
    root = tmp_path_factory.mktemp("trust")
    space = {
        "prune": {"none": {}, "channel_prune": {"ratio": 0.5}},
        "distill": {"none": {}},
        "quantize": {"none": {}, "int8_static": {"calibration_batches": 2}},
        "warm_start": [{"runtime": "onnxruntime"}, {"quantize": "int8_static"},
                       {"prune": "channel_prune", "runtime": "onnxruntime"},
                       {"prune": "channel_prune", "runtime": "torch"}],
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    config = {
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None},
        "device": {"threads": 1, "warmup": 2, "repeats": 5, "rounds": 2, "runtime": ["onnxruntime", "torch"]},
        "search": {"sampler": "random", "trials": 4, "timeout": None, "seed": 0, "structure_first": False},
        "search_space": str(root / "space.yaml"),
    }
    from autocompress.search.controller import Search

    out = root / "run"
    Search(config=RunConfig.model_validate(config), run_dir=out).search()
    return out


def received_copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``run`` whose config names a plugins folder whose import creates the returned marker."""
    copy = tmp_path / "received"
    shutil.copytree(run, copy)
    marker = tmp_path / "PAYLOAD-RAN"
    theirs = tmp_path / "their-plugins"
    theirs.mkdir()
    (theirs / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["plugins_dir"] = str(theirs)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy, marker


def _front(run: Path) -> list[dict]:
    return json.loads((run / "pareto.json").read_text())["front"]


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    code, out, err = run_main(monkeypatch, capsys, *args)
    return code, out + err


def _rehash(run: Path) -> None:
    """Records the planted bytes' hashes, as a sender controlling the whole folder would."""
    def fix(record: dict) -> dict:
        if record.get("files"):
            record["files"] = {name: sha256_file(run / name) for name in record["files"] if (run / name).is_file()}
        return record

    lines = [json.dumps(fix(json.loads(line))) for line in (run / "trials.jsonl").read_text().splitlines()]
    (run / "trials.jsonl").write_text("\n".join(lines) + "\n")
    pareto = json.loads((run / "pareto.json").read_text())
    pareto["front"] = [fix(r) for r in pareto["front"]]
    (run / "pareto.json").write_text(json.dumps(pareto))
    key = json.loads((run / "base" / "key.json").read_text())
    key["sha256"] = sha256_file(run / "base" / "weights.safetensors")
    (run / "base" / "key.json").write_text(json.dumps(key))


def test_a_planted_run_folder_runs_no_code_through_any_entry_point(run, tmp_path, monkeypatch, capsys):
    front = _front(run)
    kinds = {(r["metrics"]["runtime"], r["metrics"]["precision"]) for r in front}
    assert any((run / r["artefact"]).parent.joinpath("model.module.safetensors").is_file() for r in front), \
        "the run must keep a float module for the planted one to replace"
    planted, marker = received_copy(run, tmp_path)
    files = [p for p in planted.rglob("*") if p.is_file()]
    for folder in {p.parent for p in files if p.parent.name.isdigit() or p.parent.name == "base"}:
        (folder / ("weights.pt" if folder.name == "base" else "model.module.pt")).write_bytes(payload_bytes(marker))
    replaced = 0
    for path in files:
        if path.suffix == ".pt2":
            plant_pt2(path, marker)
        elif "".join(path.suffixes[-1:]) not in TEXT and not path.name.startswith("study.db"):
            path.write_bytes(payload_bytes(marker))
        else:
            continue
        replaced += 1
    assert replaced >= 8
    _rehash(planted)

    outcomes = []
    outcomes.append(("show", *_cli(monkeypatch, capsys, "show", planted)))
    outcomes.append(("report", *_cli(monkeypatch, capsys, "report", planted)))
    for record in front:
        for fmt in ("onnx", "torchscript", "pt2"):
            outcomes.append((f"export {record['number']} {fmt}",
                             *_cli(monkeypatch, capsys, "export", planted, "--trial", record["number"], "--format", fmt,
                                   "--out", tmp_path / f"x{record['number']}-{fmt}")))
        try:
            autocompress.load(planted, trial=record["number"])
            outcomes.append((f"load {record['number']}", 0, ""))
        except UserError as err:
            outcomes.append((f"load {record['number']}", 2, str(err)))
    outcomes.append(("resume", *_cli(monkeypatch, capsys, "search", "--resume", planted, "--trials", "6", "-q")))

    print(f"entry points tried: {len(outcomes)} on {replaced} planted files; runtimes/precisions {sorted(kinds)}")
    for name, code, text in outcomes:
        print(f"  {name}: exit {code}: {text.strip().splitlines()[-1] if text.strip() else ''}")
    assert not marker.exists(), "a planted payload ran"
    for name, code, text in outcomes:
        assert code in (0, 1, 2) and "Traceback" not in text, (name, code, text)
    assert any(code == 2 for name, code, _ in outcomes if name.startswith("export")), "nothing was refused"
    resume = next(text for name, _, text in outcomes if name == "resume")
    assert "their-plugins" not in resume


def test_a_file_changed_after_the_search_is_refused_in_one_line(run, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    record = next(r for r in _front(copy) if r["metrics"]["runtime"] == "onnxruntime")
    artefact = copy / record["artefact"]
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    code, text = _cli(monkeypatch, capsys, "export", copy, "--trial", record["number"], "--format", "onnx")
    assert code == 2 and "does not match the SHA-256 in its record" in text and len(text.strip().splitlines()) == 1
    with pytest.raises(UserError, match="does not match the SHA-256"):
        autocompress.load(copy, trial=record["number"])


def test_an_untampered_run_loads_its_float_module_without_pickles(run):
    record = next(r for r in _front(run) if (run / r["artefact"]).parent.joinpath("model.module.json").is_file())
    loaded = autocompress.load(run, trial=record["number"])
    assert isinstance(loaded.model, torch.nn.Module)
    assert not any(p.suffix == ".pt" for p in run.rglob("*")), "a run writes no pickle"
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    assert loaded.predict(images).shape == (4, 10)


def test_resume_imports_plugins_only_from_folders_named_now(run, tmp_path, monkeypatch, capsys):
    copy, marker = received_copy(run, tmp_path)
    ours = tmp_path / "our-plugins"
    ours.mkdir()
    for name in ("channel_prune", "int8_static"):
        shutil.copy(PROJECT_ROOT / "plugins" / f"{name}.py", ours)
    code, text = _cli(monkeypatch, capsys, "search", "--resume", copy, "--plugins-dir", ours, "--trials", "5", "-q")
    assert code == 0, text
    assert not marker.exists()
    assert f"plugins: 2 files from {ours.resolve()}" in " ".join(text.split()) and "channel_prune.py" in text


def test_load_exported_refuses_pickles_inside_a_pt2(tmp_path):
    import timm

    from autocompress.measure.runtimes import get_runtime

    marker = tmp_path / "PAYLOAD-RAN"
    model = timm.create_model("test_resnet", num_classes=4).eval()
    example = torch.randn(1, 3, 32, 32)
    clean = get_runtime("torch").save(model, example, tmp_path / "clean.pt2").path
    assert torch.allclose(load_exported(clean).module()(example), model(example), atol=1e-5)
    weights = tmp_path / "weights.pt2"
    shutil.copy(clean, weights)
    plant_pt2(weights, marker)
    with pytest.raises(UserError, match="not plain tensors|refusing"):
        load_exported(weights)
    custom = tmp_path / "custom.pt2"
    shutil.copy(clean, custom)
    with zipfile.ZipFile(custom, "a") as archive:
        prefix = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{prefix}/data/constants/custom_obj_0", payload_bytes(marker))
    with pytest.raises(UserError, match="pickled objects"):
        load_exported(custom)
    assert not marker.exists()
