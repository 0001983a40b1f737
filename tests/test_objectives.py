"""The seed's goals as objectives: parameters, MACs, int8 MACs, memory and energy, chosen per run."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from autocompress.config.schema import BudgetConfig, load_config
from autocompress.search.controller import Search
from autocompress.errors import UserError
from autocompress.measure.footprint import (EnergyMeter, EnergyTracker, count_int8_macs, count_macs, energy_meter,
                                    measure_memory, rapl_meter)
from autocompress.measure.accuracy import measure_latency
from autocompress.objectives import constraints, dominates, front, hypervolume
from autocompress.measure.runtimes import get_runtime
from autocompress.plugin.testing import load_plugin, make_context, tiny_model
from conftest import write_yaml


def _hand_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every Conv2d and Linear by formula, from the shapes a forward pass meets (independent of torch's counter)."""
    total = []

    def conv(mod, inputs, out):
        total.append(out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1])

    def linear(mod, inputs, out):
        total.append(out.numel() * mod.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return sum(total)


def test_macs_of_a_tiny_convnet_match_the_hand_count():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    macs, by_op = count_macs(net, torch.randn(1, 3, 8, 8))
    conv = (8 * 8 * 8) * (3 * 3 * 3)          # output elements x (C_in x k x k) = 13,824
    linear = (8 * 8 * 8) * 10                   # in_features x out_features = 5,120
    assert macs == conv + linear == 18_944
    assert by_op == {"addmm": linear, "convolution": conv}  # ReLU and the bias additions are not counted
    assert count_macs(net, torch.randn(4, 3, 8, 8))[0] == 4 * macs  # per call: at the configured batch


def test_macs_of_a_pruned_model_match_an_independent_count_and_shrink(tmp_path):
    base = tiny_model("test_resnet")
    x = torch.randn(1, 3, 32, 32)
    ctx = make_context(tmp_path, base)
    pruned = load_plugin("channel_prune").from_params({"ratio": 0.5}).apply(copy.deepcopy(base), ctx)
    base_macs, pruned_macs = count_macs(base, x)[0], count_macs(pruned, x)[0]
    assert base_macs == _hand_macs(base, x)
    assert pruned_macs == _hand_macs(pruned, x)
    assert pruned_macs < 0.5 * base_macs        # half the channels of both a conv's inputs and outputs: ~1/4


def test_an_int8_artefact_counts_its_int8_macs(tmp_path):
    model = tiny_model("test_resnet")
    ctx = make_context(tmp_path / "all", model)
    torch_macs, by_op = count_macs(model, ctx.example_input)
    conv_linear = by_op["convolution"] + by_op["addmm"]
    int8 = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(copy.deepcopy(model), ctx)
    macs_int8, ops = count_int8_macs(int8, batch_size=1)
    assert int8.precision == "int8" and macs_int8 > 0
    assert macs_int8 == pytest.approx(conv_linear, rel=0.01) and ops >= 10
    # the rule can say no: first and last layers left float, and a float export has no int8 MACs
    ctx = make_context(tmp_path / "ends", model)
    ends = load_plugin("int8_static").from_params({"calibration_batches": 1, "keep_first_last_float": True}).apply(
        copy.deepcopy(model), ctx)
    stem = copy.deepcopy(next(m for m in model.modules() if isinstance(m, nn.Conv2d)))
    first = _hand_macs(stem, ctx.example_input)  # the first convolution sees the input itself
    assert count_int8_macs(ends, 1)[0] == pytest.approx(conv_linear - first - by_op["addmm"], rel=0.01)
    fp32 = get_runtime("onnxruntime").save(model, ctx.example_input, tmp_path / "fp32.onnx")
    assert count_int8_macs(fp32, 1) == (0, 0)


def test_attention_counts_too_and_matches_the_int8_graph_of_a_vit(tmp_path):
    model = tiny_model("test_vit")
    ctx = make_context(tmp_path, model)
    macs, by_op = count_macs(model, ctx.example_input)
    assert by_op.get("_scaled_dot_product_flash_attention_for_cpu", 0) > 0   # the CPU attention kernel is counted
    int8 = load_plugin("int8_static").from_params({"calibration_batches": 1}).apply(copy.deepcopy(model), ctx)
    assert count_int8_macs(int8, 1)[0] == macs   # every matmul quantized: the ONNX graph's count is torch's


@pytest.mark.parametrize("plugin,runtime", [("int8_pt2e", "torch"), ("nncf_int8", "openvino")])
def test_int8_macs_are_read_from_torch_and_openvino_programs_too(tmp_path, plugin, runtime):
    if runtime == "openvino":
        pytest.importorskip("nncf")
    model = tiny_model("test_resnet")
    ctx = make_context(tmp_path, model, runtime=runtime)
    macs = count_macs(model, ctx.example_input)[0]
    int8 = load_plugin(plugin).from_params({}).apply(copy.deepcopy(model), ctx)
    assert int8.runtime == runtime and count_int8_macs(int8, 1) == (macs, 16)   # 15 convolutions and the classifier
    fp32 = get_runtime(runtime).save(model, ctx.example_input, tmp_path / f"fp32{get_runtime(runtime).suffix}")
    assert count_int8_macs(fp32, 1) == (0, 0)


def test_memory_of_one_inference_is_measured_in_a_fresh_process(tmp_path):
    small = get_runtime("onnxruntime").save(tiny_model("test_resnet"), torch.randn(1, 3, 32, 32), tmp_path / "s.onnx")
    big = get_runtime("onnxruntime").save(tiny_model("resnet18"), torch.randn(1, 3, 32, 32), tmp_path / "b.onnx")
    mb_small, detail = measure_memory(small, threads=1, device="cpu", shape=[1, 3, 32, 32])
    mb_big, _ = measure_memory(big, threads=1, device="cpu", shape=[1, 3, 32, 32])
    assert 0 < mb_small < mb_big                # ResNet-18's 45 MB of weights are resident after loading
    assert mb_big > big.size_bytes() / 1e6 * 0.9
    assert detail["peak_mb"] - detail["rss_before_mb"] == pytest.approx(mb_small, abs=0.01)
    assert "fresh process" in detail["method"]


def _powercap(root: Path, energy: int, max_range: int = 1000, readable: bool = True) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    (zone / "energy_uj").chmod(0o644 if readable else 0o000)
    sub = root / "intel-rapl:0:0"                # a core sub-zone: inside the package, not added again
    sub.mkdir(exist_ok=True)
    (sub / "name").write_text("core\n")
    return zone


def test_rapl_counter_is_read_with_its_wrap_around_and_refused_with_a_reason(tmp_path):
    zone = _powercap(tmp_path / "pc", energy=900)
    meter, why = rapl_meter(tmp_path / "pc")
    assert why is None and meter.source == "rapl:package-0"
    assert meter.read() == 0.0
    (zone / "energy_uj").write_text("950\n")
    assert meter.read() == pytest.approx(0.050)           # 50 uJ
    (zone / "energy_uj").write_text("30\n")                # wrapped at max_energy_range_uj = 1000
    assert meter.read() == pytest.approx(0.050 + 0.081)    # 950 -> 1000 -> 0 -> 30: 81 uJ
    assert rapl_meter(tmp_path / "none")[1] == f"no readable RAPL counter under {tmp_path / 'none'} (it does not exist)"
    _powercap(tmp_path / "locked", energy=1, readable=False)
    if os.geteuid() != 0:  # root reads any file
        meter, why = rapl_meter(tmp_path / "locked")
        assert meter is None and "intel-rapl:0/energy_uj is not readable by this user" in why


def test_energy_per_call_is_the_counters_growth_over_each_predictors_timed_rounds():
    # A counter that grows 1 mJ per millisecond of wall clock stands in for RAPL, which this VM does not expose:
    # each predictor's energy per call must then equal its time per call, warm-up excluded.
    origin = time.perf_counter()
    meter = EnergyMeter("synthetic", lambda: (time.perf_counter() - origin) * 1e3)

    def busy(ms):
        def predict(x):
            end = time.perf_counter() + ms / 1e3
            while time.perf_counter() < end:
                pass
        return predict

    tracker = EnergyTracker(meter, warmup=3)
    lat = measure_latency(tracker.wrap({"trial": busy(2.0), "base": busy(4.0)}), torch.zeros(1), warmup=3, repeats=5,
                          rounds=3, threads=1)
    energy = tracker.finish()
    assert energy["trial"] == pytest.approx(2.0, rel=0.15) and energy["base"] == pytest.approx(4.0, rel=0.15)
    assert energy["trial"] == pytest.approx(lat["trial"].median_ms, rel=0.15)
    assert tracker.calls == {"trial": 18, "base": 18}


def test_energy_on_this_machine_is_measured_with_its_source_or_not_available_with_the_reason():
    meter, why = energy_meter("cpu")
    if meter is None:
        assert "/sys/class/powercap" in why and "NVIDIA" in why
    else:
        assert meter.source.startswith("rapl:") and why is None
        first = meter.read()
        sum(range(2_000_000))
        assert meter.read() > first


def test_budgets_on_the_new_figures_are_relative_violations():
    budget = BudgetConfig(max_latency_ms=None, max_size_mb=None, max_accuracy_drop=None, max_macs=2e6,
                          max_params=1000, max_memory_mb=10.0, max_energy_mj=None)
    record = {"metrics": {"accuracy": 90.0, "latency_ms": 1.0, "size_mb": 1.0, "params": 500, "macs": 3e6,
                          "memory_mb": None, "energy_mj": None}}
    assert constraints(record, budget, 90.0) == {"params": -0.5, "macs": pytest.approx(0.5)}  # memory not measured


def test_front_and_hypervolume_follow_the_objectives():
    rec = lambda n, acc, macs, lat: {"number": n, "metrics": {"accuracy": acc, "macs": macs, "latency_ms": lat}}  # noqa
    records = [rec(0, 90, 10, 1.0), rec(1, 95, 20, 0.5), rec(2, 89, 30, 0.1)]
    assert [r["number"] for r in front(records, ["accuracy", "macs"])] == [1, 0]
    assert [r["number"] for r in front(records, ["accuracy", "macs", "latency"])] == [1, 0, 2]
    from optuna._hypervolume import compute_hypervolume

    points = np.random.default_rng(0).uniform(0, 1, size=(9, 4))
    assert hypervolume([list(p) for p in points], [1.0] * 4) == pytest.approx(
        compute_hypervolume(points, np.ones(4)), rel=1e-9)
    assert not dominates([90, 10], [90, 10], ("maximize", "minimize"))


def test_early_stop_front_rule_compares_the_chosen_objectives():
    from autocompress.trial.early_stop import StopRule, StopTrial

    history = [[[1, 70], [2, 70]]] * 3
    rule = StopRule(mode="front", objectives=("accuracy", "macs"), history=history, front=[[90.0, 1e6, 0.9]])
    rule.position = rule.position_of({"macs": 2e6, "latency_ms": 0.1, "latency_vs_base": 0.5})
    assert rule.position == (2e6, 0.5)
    with pytest.raises(StopTrial, match=r"a finished trial has 90.00% at 1,000,000 MACs"):
        rule.check(1, 50)                        # fewer MACs and more accurate: slower does not matter here
    StopRule(mode="front", objectives=("accuracy", "macs"), history=history, front=[[90.0, 3e6, 0.1]],
             position=(2e6, 0.5)).check(1, 50)   # more MACs: not dominated, however fast
    assert rule.position_of({"latency_ms": 0.1}) is None   # an objective the probe lacks: no front stop


SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.3}}},
    "distill": {"none": {}, "logit_kd": {"epochs": 1}},
    "quantize": {"none": {}, "int8_static": {"calibration_batches": 2}},
    "warm_start": [
        {"quantize": "int8_static"},                                             # unpruned: over the MACs budget
        {"distill": "logit_kd"},                                                 # stopped at its structure
        {"prune": {"channel_prune": {"ratio": 0.6}}, "distill": "logit_kd",       # within it (pruning is
         "quantize": "int8_static"},                                              # always followed by recovery)
    ],
}
MAX_MACS = 3.0e6  # test_resnet: 4.1M MACs at 32x32; 60 % channel pruning: 1.2M


@pytest.fixture(scope="module")
def macs_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objectives")
    cfg = {
        "objectives": ["accuracy", "macs"],
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 50.0, "max_macs": MAX_MACS},
        "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
        "search": {"sampler": "tpe", "trials": 5, "timeout": None, "seed": 0, "early_stop": "front", "proxy_gate": None},
        "search_space": str(write_yaml(tmp / "space.yaml", SPACE)),
    }
    config = load_config(write_yaml(tmp / "run.yaml", cfg))
    pareto = Search(config=config, run_dir=tmp / "out").search()
    return tmp / "out", config, pareto


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def test_a_search_on_accuracy_and_macs_has_a_front_in_those_two(macs_run):
    run, config, pareto = macs_run
    study = optuna.load_study(study_name=config.search.study_name, storage=f"sqlite:///{run / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["accuracy", "macs"]
    assert pareto["objectives"] == ["accuracy", "macs"] and pareto["directions"] == ["maximize", "minimize"]
    records = {r["number"]: r for r in _records(run)}
    complete = [r for r in records.values() if r["state"] == "complete"]
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            m = records[t.number]["metrics"]
            assert t.values == [m["accuracy"], m["macs"]]
            assert t.constraints["macs"] == pytest.approx(m["macs"] / MAX_MACS - 1, abs=1e-5)
    for r in complete:  # feasibility follows the MACs budget (the accuracy floor is below zero here)
        assert r["feasible"] == (r["metrics"]["macs"] <= MAX_MACS), r["number"]
    assert any(not r["feasible"] for r in complete) and any(r["feasible"] for r in complete)
    assert pareto["front"]
    values = [(r["metrics"]["accuracy"], r["metrics"]["macs"]) for r in pareto["front"]]
    for i, (acc, macs) in enumerate(values):
        assert macs <= MAX_MACS
        assert not any(j != i and dominates([a, m], [acc, macs], ("maximize", "minimize")) for j, (a, m) in enumerate(values))
    feasible = [(r["metrics"]["accuracy"], r["metrics"]["macs"]) for r in complete if r["feasible"]]
    assert all(not any(dominates([a, m], list(v), ("maximize", "minimize")) for a, m in feasible) for v in values)


def test_every_trial_records_macs_int8_macs_memory_and_energy_or_why_not(macs_run):
    run, _, pareto = macs_run
    base = json.loads((run / "base.json").read_text())
    b = base["metrics"]
    assert b["macs"] == 4_099_008 and b["macs_int8"] == 0 and b["memory_mb"] > 0
    assert base["footprint"]["macs"]["by_op"] == {"addmm": 960, "convolution": 4_098_048}
    assert "fresh process" in base["footprint"]["memory"]["method"]
    if b["energy_mj"] is None:
        assert "/sys/class/powercap" in b["not_measured"]["energy_mj"] and b["energy_source"] is None
    else:
        assert b["energy_mj"] > 0 and b["energy_source"].startswith(("rapl:", "nvml:"))
    machine = json.loads((run / "machine.json").read_text())
    assert machine["energy"]["source"] == b["energy_source"]
    records = _records(run)
    int8 = [r for r in records if r["state"] == "complete" and r["metrics"]["precision"] == "int8"]
    assert int8 and all(r["metrics"]["macs_int8"] == pytest.approx(r["metrics"]["macs"], rel=0.01) for r in int8)
    pruned = [r for r in records if r["state"] == "complete" and r["choices"]["prune"][0] == "channel_prune"]
    assert pruned and all(r["metrics"]["macs"] < b["macs"] for r in pruned)
    for row in pareto["front"]:  # front models: memory measured
        assert row["metrics"]["memory_mb"] > 0 and "memory" in row["footprint"]
    stopped = [r for r in records if (r.get("stopped") or {}).get("stage") == "structure"]
    assert stopped and all("MACs" in r["stopped"]["reason"] for r in stopped)  # the unpruned KD trial, untrained
    over = [r for r in records if r["state"] == "complete" and not r["feasible"] and not r.get("stopped")]
    assert all(r["metrics"]["memory_mb"] is None and "within the budget" in r["metrics"]["not_measured"]["memory_mb"]
               for r in over)


def test_show_and_report_follow_the_objectives(macs_run, tmp_path):
    from rich.console import Console

    from autocompress.results.report import write_report
    from autocompress.results.show import front_table

    run, _, _ = macs_run
    console = Console(width=250, record=True)
    console.print(front_table(run, sort="macs"))
    text = console.export_text()
    assert "(accuracy x MACs)" in text and "4.1M" in text and "mem MB" in text
    pareto = json.loads((run / "pareto.json").read_text())
    for row in pareto["front"]:  # the share of MACs in int8, beside the precision
        m = row["metrics"]
        assert (f"int8 {100 * m['macs_int8'] / m['macs']:.0f}%" in text) == (m["precision"] == "int8")
    assert ("energy mJ" in text) == (json.loads((run / "base.json").read_text())["metrics"]["energy_mj"] is not None)
    page, png = write_report(run)
    html = page.read_text()
    for text, present in (("accuracy vs MACs", True), ("Pareto front: 3-D view", False),  # 2 objectives: a 2-D front
                          ("accuracy vs latency", False), ("int8 MACs", True), ("MACs = 1.1 × base", True)):
        assert (text in html) is present, text  # (not `in html` itself: pytest would diff 5 MB of page)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # an older run (no objectives, no macs/memory/energy anywhere) still opens in show and report
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("report.html", "front.png", "cache"))
    strip = lambda m: {k: v for k, v in m.items() if k not in ("macs", "macs_int8", "memory_mb", "energy_mj",  # noqa
                                                                "energy_source", "not_measured")}
    pareto = json.loads((old / "pareto.json").read_text())
    pareto.pop("objectives"), pareto.pop("directions")
    pareto["base"] = strip(pareto["base"])
    for row in pareto["front"]:
        row["metrics"] = strip(row["metrics"])
        row.pop("footprint")
    (old / "pareto.json").write_text(json.dumps(pareto))
    base = json.loads((old / "base.json").read_text())
    base["metrics"] = strip(base["metrics"])
    (old / "base.json").write_text(json.dumps(base))
    lines = []
    for r in _records(old):
        if r.get("metrics"):
            r["metrics"] = strip(r["metrics"])
        lines.append(json.dumps(r))
    (old / "trials.jsonl").write_text("\n".join(lines) + "\n")
    import yaml

    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg.pop("objectives")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    console.print(front_table(old))
    assert "n/a" in console.export_text()
    html = write_report(old)[0].read_text()
    for text in ("accuracy vs latency", "Pareto front: 3-D view", "n/a (not recorded", "size = 1.1 × base"):
        assert text in html, text


def test_a_resumed_run_keeps_its_objectives(macs_run, tmp_path):
    run, config, _ = macs_run
    changed = config.model_copy(update={"objectives": ["accuracy", "latency"]})
    with pytest.raises(UserError, match=r"^objectives: .* was searched for accuracy, macs; a resumed run keeps its "
                                        r"objectives"):
        Search(config=changed, run_dir=run).search()


def test_a_macs_budget_no_configuration_can_meet_is_refused(tmp_path, tiny_config_dict):
    tiny_config_dict["budget"] = {"max_macs": 1000, "max_latency_ms": None, "max_size_mb": None}
    tiny_config_dict["model"]["train_epochs"] = 0
    tiny_config_dict["search_space"] = str(write_yaml(tmp_path / "space.yaml", {
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.3}}}}))
    config = load_config(write_yaml(tmp_path / "run.yaml", tiny_config_dict))
    with pytest.raises(UserError, match=r"^budget.max_macs: 1,000 MACs cannot be met: the most compressed configuration "
                                        r"\(prune=channel_prune\) has [\d,]+ MACs on onnxruntime \(base 4,099,008 MACs\)"):
        Search(config=config, run_dir=tmp_path / "out").search()


@pytest.mark.parametrize("field,cfg", [
    ("budget.max_energy_mj", {"budget": {"max_energy_mj": 5.0}}),
    ("objectives", {"objectives": ["accuracy", "energy"]}),
])
def test_energy_where_the_machine_cannot_measure_it_is_refused_in_one_line(tmp_path, field, cfg):
    meter, why = energy_meter("cpu")
    if meter is not None:
        pytest.skip(f"this machine measures energy ({meter.source})")
    result = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", str(write_yaml(tmp_path / "c.yaml", cfg)),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"{field}: energy cannot be measured on this machine ({why})")
    assert not (tmp_path / "o").exists()
