"""Trials on a real local Ray: same results as in-process, faults recorded, worker deaths
retried once, and the time limit honoured. One Ray for the session (conftest ``ray_cluster``)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest

from autocompress.config.schema import load_config
from autocompress.search.controller import Search
from conftest import write_yaml

# A plugin that misbehaves on request. It blocks (sleeps, writing its PID first so a test can
# SIGKILL it) for the first ``blocks`` attempts under a ``key``, then raises, poisons the
# weights with NaN, asks for an impossible amount of memory, or does nothing.
FAULTY_PLUGIN = '''
"""A test plugin that blocks, raises, produces NaN or runs out of memory on request."""
import os
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from autocompress import Plugin, PluginConfig, Stage

HERE = Path(__file__).resolve().parent


class Faulty(Plugin):
    name = "faulty"
    stage = Stage.PRUNE
    changes_structure = False

    class Config(PluginConfig):
        mode: Literal["ok", "raise", "nan", "oom"] = "ok"
        blocks: int = Field(default=0, ge=0, le=5)
        key: str = "k"
        sleep: float = 300.0
        block_trial: int = -1  # block only this trial (its work folder is under trials/<number>/)

    search_space = {"mode": ["ok"], "blocks": [0], "key": ["k"]}

    def apply(self, model, ctx):
        cfg = self.config
        pids = HERE / "pids"
        pids.mkdir(exist_ok=True)
        attempt = len(list(pids.glob(f"{cfg.key}-*.pid")))
        number = next((int(part) for part in reversed(Path(ctx.workdir).parts) if part.isdigit()), None)
        if attempt < cfg.blocks and cfg.block_trial in (-1, number):
            tmp = pids / f".{cfg.key}-{attempt}.tmp"
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, pids / f"{cfg.key}-{attempt}.pid")
            time.sleep(cfg.sleep)
        if cfg.mode == "raise":
            raise ValueError("faulty plugin raised on purpose")
        if cfg.mode == "nan":
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        if cfg.mode == "oom":
            torch.empty(1 << 50, dtype=torch.uint8)
        return model
'''

FAST_SPACE = {  # the real plugins, without int8 calibration (the slow part), so a trial takes ~1-2 s
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.7}}},
    "distill": {"none": {}, "logit_kd": {"epochs": [1]}},
}


def faulty_plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "faulty.py").write_text(FAULTY_PLUGIN)
    # whatever the umask: workers import a plugin file in place (its __file__ finds pids/) only when no
    # one but its owner can change it; otherwise they import their checked private copy
    os.chmod(folder, 0o755)
    os.chmod(folder / "faulty.py", 0o644)
    return folder


def make_config(tmp_path: Path, tiny: dict, space: dict, **search):
    data = {**tiny, "search_space": str(write_yaml(tmp_path / "space.yaml", space))}
    # every trial is to complete (shape and resume tests): no structure skipped on its proxy
    data["search"] = {**tiny["search"], "proxy_gate": None, **search}
    return load_config(write_yaml(tmp_path / "run.yaml", data))


def run_search(config, run_dir: Path, **kw) -> dict:
    search = Search(config=config, run_dir=run_dir, **kw)
    return search.search()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'study.db'}")


class Killer(threading.Thread):
    """SIGKILLs every process whose PID the faulty plugin writes under ``keys``."""

    def __init__(self, pids: Path, keys: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.pids, self.keys, self.killed, self.done = pids, keys, [], threading.Event()

    def run(self) -> None:
        seen = set()
        while not self.done.is_set():
            for f in sorted(self.pids.glob("*.pid")) if self.pids.is_dir() else []:
                if f.name in seen or not f.name.startswith(self.keys):
                    continue
                seen.add(f.name)
                pid = int(f.read_text())
                time.sleep(0.2)  # well inside the sleep: mid-trial
                os.kill(pid, signal.SIGKILL)
                self.killed.append((f.stem, pid))
            time.sleep(0.05)


def test_search_on_ray_has_the_same_shape_as_in_process(ray_cluster, tmp_path, tiny_config_dict):
    runs = {}
    for executor in ("inprocess", "ray"):
        (tmp_path / executor).mkdir()
        config = make_config(tmp_path / executor, tiny_config_dict, FAST_SPACE, trials=6, executor=executor,
                             workers=2, cpus_per_trial=1)
        runs[executor] = tmp_path / executor / "run"
        t0 = time.time()
        pareto = run_search(config, runs[executor])
        print(f"{executor}: {time.time() - t0:.1f}s")
        assert pareto["trials_finished"] == 6, records(runs[executor])
    local, remote = runs["inprocess"], runs["ray"]
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in remote.iterdir())
    a, b = records(local), records(remote)
    assert sorted(r["number"] for r in a) == sorted(r["number"] for r in b) == list(range(6))
    assert {tuple(sorted(r)) for r in a} == {tuple(sorted(r)) for r in b}
    assert all(r["measure_slot"] == "node" and r["node_id"] and r["attempts"] == 1 for r in b)
    assert all(r["measure_wait_s"] is not None and r["host"] and r["device"].startswith("cpu") for r in b)
    pa, pb = (json.loads((d / "pareto.json").read_text()) for d in (local, remote))
    assert sorted(pa) == sorted(pb)
    assert sorted(pa["front"][0]) == sorted(pb["front"][0])
    states = [t.state for t in study_of(remote).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 6
    # the base is measured where the trials are: on a Ray worker, under the node's measurement slot
    base = json.loads((remote / "base.json").read_text())
    assert base["measure_slot"] == "node" and base["node_id"] and base["worker_pid"] != os.getpid()
    assert json.loads((local / "base.json").read_text())["worker_pid"] == os.getpid()


def test_faults_are_recorded_and_a_killed_worker_is_retried_once(ray_cluster, tmp_path, tiny_config_dict):
    plugins = faulty_plugins(tmp_path)
    space = {
        "prune": {"faulty": {"mode": ["ok", "raise", "nan", "oom"], "blocks": [0, 1, 2], "key": list("abcdef")}},
        "warm_start": [
            {"prune": {"faulty": {"mode": "ok", "blocks": 1, "key": "a"}}},     # killed once: retried, completes
            {"prune": {"faulty": {"mode": "ok", "blocks": 2, "key": "b"}}},     # killed twice: failed
            {"prune": {"faulty": {"mode": "raise", "blocks": 0, "key": "c"}}},
            {"prune": {"faulty": {"mode": "nan", "blocks": 0, "key": "d"}}},
            {"prune": {"faulty": {"mode": "oom", "blocks": 0, "key": "e"}}},
            {"prune": {"faulty": {"mode": "ok", "blocks": 0, "key": "f"}}},
        ],
    }
    tiny_config_dict["plugins_dir"] = str(plugins)
    config = make_config(tmp_path, tiny_config_dict, space, trials=6, executor="ray", workers=2, cpus_per_trial=1)
    killer = Killer(plugins / "pids", ("a-", "b-"))
    killer.start()
    try:
        pareto = run_search(config, tmp_path / "run")
    finally:
        killer.done.set()
    by_key = {r["choices"]["prune"][1]["key"]: r for r in records(tmp_path / "run")}
    assert sorted(k for k, _ in killer.killed) == ["a-0", "b-0", "b-1"]
    assert by_key["a"]["state"] == "complete" and by_key["a"]["attempts"] == 2
    assert by_key["b"]["state"] == "fail" and by_key["b"]["reason"].startswith("worker died (retried 1x)")
    assert by_key["b"]["attempts"] == 2
    assert by_key["c"]["state"] == "fail" and by_key["c"]["reason"] == "ValueError: faulty plugin raised on purpose"
    assert by_key["d"]["state"] == "fail" and by_key["d"]["reason"].startswith("FloatingPointError")
    assert by_key["e"]["state"] == "fail" and "memory" in by_key["e"]["reason"].lower()
    assert by_key["f"]["state"] == "complete"
    assert pareto["trials_finished"] == 2 and pareto["trials_failed"] == 4
    states = {t.user_attrs["record"]["choices"]["prune"][1]["key"]: t.state for t in study_of(tmp_path / "run").trials}
    assert states == {k: optuna.trial.TrialState.COMPLETE if k in "af" else optuna.trial.TrialState.FAIL
                      for k in "abcdef"}


def test_time_limit_is_honoured_within_one_trial(ray_cluster, tmp_path, tiny_config_dict):
    plugins = faulty_plugins(tmp_path)
    space = {  # trial 0 hangs on its first attempt; the rest take a second or two
        "prune": {"faulty": {"mode": ["ok"], "blocks": [1], "key": ["t"], "block_trial": [0]}},
    }
    tiny_config_dict["plugins_dir"] = str(plugins)
    timeout = 25.0
    config = make_config(tmp_path, tiny_config_dict, space, trials=200, executor="ray", workers=2,
                         cpus_per_trial=1, timeout=timeout)
    search = Search(config=config, run_dir=tmp_path / "run")
    search.validate()
    t0 = time.time()
    pareto = search.search()
    elapsed = time.time() - t0
    rows = records(tmp_path / "run")
    done = [r for r in rows if r["state"] == "complete"]
    longest = max(r["duration_s"] for r in done)
    assert timeout <= elapsed <= timeout + longest + 3, (elapsed, longest)
    assert all(r["finished"] - search.progress.started <= timeout + longest + 1 for r in rows)
    assert 0 < len(done) < 200
    hung = [r for r in rows if r["number"] == 0]
    assert len(hung) == 1, "trial 0 (the one that hangs) is recorded once"
    assert hung[0]["state"] == "fail" and hung[0]["interrupted"] and hung[0]["reason"] == "cancelled at time limit"
    # the other worker's trial may still be running at the limit too (one that takes longer than the
    # median the controller starts it on): it is cancelled and re-queued the same way, nothing else is
    cancelled = [r for r in rows if r.get("interrupted")]
    assert all(r["reason"] == "cancelled at time limit" for r in cancelled) and len(cancelled) <= 2
    assert pareto["trials_interrupted"] == len(cancelled) and pareto["trials_failed"] == 0
    study = study_of(tmp_path / "run")
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    requeued = sorted(json.dumps(t.user_attrs["requeued"], sort_keys=True) for t in waiting)
    assert requeued == sorted(json.dumps(study.trials[r["number"]].params, sort_keys=True) for r in cancelled)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    pid = int((plugins / "pids" / "t-0.pid").read_text())
    for _ in range(50):  # ray.cancel(force=True) killed the hung worker
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the cancelled trial's worker {pid} is still alive")
