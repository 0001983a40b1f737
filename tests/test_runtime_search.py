"""The deploy runtime as a searched dimension: each trial is saved for, and measured on, the
runtime the search picked; quantizers are offered only with runtimes they produce."""

import json

import optuna
import pytest

from autocompress.config.schema import load_config
from autocompress.search.controller import Search
from autocompress.errors import UserError
from autocompress.plugin.registry import discover
from autocompress.search.space import parse_search_space
from conftest import write_yaml

pytest.importorskip("openvino")

SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": 0.5}},
    "quantize": {"none": {}, "int8_static": {"calibration_batches": 2}, "nncf_int8": {"subset_size": 64}},
    "warm_start": [{"quantize": "nncf_int8"}, {"quantize": "int8_static"}],
}


@pytest.fixture(scope="module")
def registry():
    return discover("plugins")


def test_quantizers_are_offered_only_on_their_runtime(registry):
    space = parse_search_space(SPACE, registry, ["onnxruntime", "openvino"])
    assert space.options(next(s for s in space.stages if s.value == "quantize"), "onnxruntime") == ["none", "int8_static"]
    assert space.warm_start == [
        {"runtime": "openvino", "prune": "none", "quantize@openvino": "nncf_int8"},
        {"runtime": "onnxruntime", "prune": "none", "quantize@onnxruntime": "int8_static"},
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        choices = space.suggest(trial, registry)
        runtime, quantizer = choices["runtime"][0], choices["quantize"][0]
        assert quantizer in {"none", {"onnxruntime": "int8_static", "openvino": "nncf_int8"}[runtime]}
        seen.add((runtime, quantizer))
        study.tell(trial, 0.0)
    assert len(seen) == 4


@pytest.mark.parametrize("raw, runtimes, message", [
    ({"quantize": {"nncf_int8": {}}}, ["onnxruntime", "openvino"],
     "search_space.quantize: no choice runs on runtime onnxruntime; add 'none' or a quantize plugin for onnxruntime"),
    ({"quantize": {"none": {}, "int8_pt2e": {}}}, ["onnxruntime", "openvino"],
     "search_space.quantize.int8_pt2e: int8_pt2e produces artefacts for torch, not device.runtime=onnxruntime/openvino"),
    ({"quantize": {"none": {}, "int8_static": {}}, "warm_start": [{"runtime": "torch"}]}, ["onnxruntime", "openvino"],
     "search_space.warm_start[0].runtime: 'torch' is not among device.runtime: onnxruntime, openvino"),
])
def test_bad_runtime_spaces_fail_with_one_line(registry, raw, runtimes, message):
    with pytest.raises(UserError) as err:
        parse_search_space(raw, registry, runtimes)
    assert str(err.value) == message


def test_runtime_list_is_validated():
    with pytest.raises(UserError, match=r"^device.runtime: unknown runtime 'tensorrt'; allowed: onnxruntime, torch, openvino"):
        load_config(overrides={"device.runtime": ["onnxruntime", "tensorrt"]})
    with pytest.raises(UserError, match=r"^device.runtime: each runtime may be listed once$"):
        load_config(overrides={"device.runtime": ["torch", "torch"]})
    assert load_config(overrides={"device.runtime": ["openvino"]}).device.runtime == "openvino"


def test_search_over_runtimes_measures_each_trial_on_its_own_runtime(tmp_path, tiny_config_dict):
    cfg = dict(tiny_config_dict)
    cfg["device"] = {**cfg["device"], "runtime": ["onnxruntime", "openvino"]}
    cfg["search"] = {**cfg["search"], "trials": 4}
    cfg["search_space"] = str(write_yaml(tmp_path / "space.yaml", SPACE))
    run = tmp_path / "out"
    Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=run).search()

    base = json.loads((run / "base.json").read_text())
    assert set(base["by_runtime"]) == {"onnxruntime", "openvino"}
    fastest = base["metrics"]["runtime"]
    assert fastest == min(_timed_together(run), key=_timed_together(run).get)
    assert (run / "base/model.onnx").is_file() and (run / "base/model.xml").is_file()

    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert [r["state"] for r in records] == ["complete"] * 4
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml"}
    for r in records:
        runtime = r["choices"]["runtime"][0]
        assert r["metrics"]["runtime"] == runtime
        # timed beside the reference base (the fastest runtime's), so every ratio means the same base
        assert r["base_latency_same_window"] and r["base_runtime"] == fastest
        if r["choices"]["quantize"][0] != "none":
            assert r["metrics"]["precision"] == "int8"
        if r["artefact"]:
            assert r["artefact"].endswith(suffix[runtime])
    # the warm starts ran first: NNCF on OpenVINO, then ORT static int8
    assert [(r["choices"]["runtime"][0], r["choices"]["quantize"][0]) for r in records[:2]] == [
        ("openvino", "nncf_int8"), ("onnxruntime", "int8_static")]


def _timed_together(run) -> dict[str, float]:
    """``{runtime: ms}`` from the run log's ``base reference: ... timed together ...`` line."""
    line = next(l for l in (run / "run.log").read_text().splitlines() if "base reference:" in l)
    together = line.split("timed together in interleaved rounds: ", 1)[1].rstrip(")")
    return {rt: float(ms.split()[0]) for rt, ms in (part.split(" ", 1) for part in together.split(", "))}


def test_the_reference_base_is_the_faster_one_timed_together_not_in_its_own_window(tmp_path, tiny_config_dict):
    """Each base is measured in its own window first; a window that flatters one runtime (here: the eager
    torch program, told to have read 1 ns) must not make it the reference every trial is judged against."""
    cfg = dict(tiny_config_dict)
    cfg["device"] = {**cfg["device"], "runtime": ["onnxruntime", "torch"]}
    cfg["search_space"] = str(write_yaml(tmp_path / "space.yaml", {"prune": {"none": {}}, "quantize": {"none": {}}}))
    run = tmp_path / "out"
    search = Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=run)
    search.validate()
    measured = search.executor.run

    def flattering_window(spec):
        record = measured(spec)
        if spec.number == -1 and record.metrics.runtime == "torch":
            record.metrics.latency_ms = 1e-6
        return record

    search.executor.run = flattering_window
    base = search.prepare()
    together = _timed_together(run)
    assert together["torch"] > together["onnxruntime"]  # eager Python calls vs one ORT session, batch 1
    assert base.metrics.runtime == "onnxruntime"
    assert json.loads((run / "base.json").read_text())["metrics"]["runtime"] == "onnxruntime"
