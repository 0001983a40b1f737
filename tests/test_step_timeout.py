"""search.step_timeout: a step that runs past it fails its trial, naming the step, and the search goes on;
a budget probe past it is dropped from the check; a running step says what it is doing."""

import json
import time
from pathlib import Path

from autocompress.trial import watchdog
from autocompress.config.schema import SearchConfig, load_config
from autocompress.search.controller import Search
from conftest import in_fresh_process, write_yaml

# A plugin that takes as long as it is told, in several ways a real step can hang.
SLEEPY_PLUGIN = '''
"""A test plugin whose apply (or whose model's export) takes as long as it is told."""
import signal
import time
from typing import Literal

import torch
from pydantic import Field

from autocompress import Plugin, PluginConfig, Stage


class SlowForward(torch.nn.Module):
    """Sleeps in every forward call: the export's trace and each timed call."""

    def __init__(self, inner, seconds):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


class Sleepy(Plugin):
    name = "sleepy"
    stage = Stage.PRUNE
    changes_structure = True  # the budget check probes it

    class Config(PluginConfig):
        mode: Literal["sleep", "broad", "bare", "slow_export", "blocked", "ok"] = "ok"
        seconds: float = Field(default=0.0, ge=0, le=600)

    search_space = {"mode": ["sleep", "broad", "bare", "slow_export", "blocked", "ok"],
                    "seconds": {"low": 0.0, "high": 60.0}}
    stronger = {"mode": ["sleep"], "seconds": "high"}  # what the budget check probes: the longest sleep

    def apply(self, model, ctx):
        mode, seconds = self.config.mode, self.config.seconds
        if mode == "sleep":
            time.sleep(seconds)
        elif mode == "broad":  # a broad except, as libraries have: the timeout is no Exception
            try:
                time.sleep(seconds)
            except Exception:
                pass
        elif mode == "bare":  # swallows everything and goes on: failed when it returns all the same
            try:
                time.sleep(seconds)
            except BaseException:
                pass
        elif mode == "blocked":  # SIGALRM never reaches this thread: as good as a hang inside native code
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(seconds)
        elif mode == "slow_export":
            return SlowForward(model, seconds)
        return model
'''


# Long enough that the base's own export and measurement (also limited) never reach it on a loaded machine
LIMIT = "5s"


def sleepy_plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "sleepy.py").write_text(SLEEPY_PLUGIN)
    return folder


def make_config(tmp_path: Path, tiny: dict, warm: list[dict], *, budget: dict | None = None, **search):
    space = {"prune": {"none": {}, "sleepy": {}}, "warm_start": [{"prune": {"sleepy": w}} for w in warm]}
    data = {**tiny, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
            "plugins_dir": str(sleepy_plugins(tmp_path))}
    data["model"] = {**tiny["model"], "train_epochs": 0}
    data["search"] = {**tiny["search"], "trials": len(warm), "step_timeout": LIMIT, **search}
    if budget is not None:
        data["budget"] = budget
    return load_config(write_yaml(tmp_path / "run.yaml", data))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def test_step_timeout_parses_like_timeout():
    assert SearchConfig().step_timeout == 10800.0
    assert SearchConfig(step_timeout="90s").step_timeout == 90.0
    assert SearchConfig(step_timeout="2h").step_timeout == 7200.0
    assert SearchConfig(step_timeout=None).step_timeout is None
    assert watchdog.format_duration(1200.0) == "20m" and watchdog.format_duration(1.5) == "1.5s"


@in_fresh_process
def test_a_step_past_its_limit_fails_its_trial_and_the_search_goes_on(tmp_path, tiny_config_dict, monkeypatch):
    monkeypatch.setattr(watchdog, "HEARTBEAT_S", 0.4)
    warm = [{"mode": "sleep", "seconds": 30}, {"mode": "broad", "seconds": 30}, {"mode": "bare", "seconds": 30},
            {"mode": "slow_export", "seconds": 30}, {"mode": "ok", "seconds": 0}]
    config = make_config(tmp_path, tiny_config_dict, warm)
    events = []
    t0 = time.time()
    pareto = Search(config=config, run_dir=tmp_path / "run", on_event=lambda kind, p: events.append((kind, p))).search()
    assert time.time() - t0 < 90  # four 30 s sleeps cut at 5 s
    rows = records(tmp_path / "run")
    assert [r["state"] for r in rows] == ["fail", "fail", "fail", "fail", "complete"]
    for r in rows[:3]:
        assert r["reason"] == "step timeout: prune sleepy ran past 5s (search.step_timeout)"
        assert r["timed_out"] == {"step": "prune sleepy", "limit_s": 5.0}
        assert r["duration_s"] < 10
    assert rows[3]["reason"] == ("step timeout: export+measure (onnxruntime, after prune sleepy) ran past 5s "
                                 "(search.step_timeout)")
    assert "StepTimeout" in (tmp_path / "run" / "trials" / "0000" / "error.txt").read_text()
    assert pareto["trials_failed"] == 4 and pareto["trials_finished"] == 1 and len(pareto["front"]) == 1
    assert not list((tmp_path / "run").rglob(watchdog.STEP_FILE))
    # the heartbeat: in the log and through the display's events
    log = (tmp_path / "run" / "run.log").read_text()
    assert "trial 0: prune sleepy running 0.4s" in log
    assert any(kind == "log" and p.startswith("trial 3: export+measure (onnxruntime, after prune sleepy) running")
               for kind, p in events)
    import signal

    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN) and signal.getitimer(signal.ITIMER_REAL)[0] == 0


@in_fresh_process
def test_a_budget_probe_past_its_limit_is_dropped_and_the_search_goes_on(tmp_path, tiny_config_dict):
    # the budget check probes the strongest configuration: mode 'sleep' for 60 s. Without the limit
    # it would hang the check; once it is dropped an impossible size cannot be refused either
    config = make_config(tmp_path, tiny_config_dict, [{"mode": "ok", "seconds": 0}],
                         budget={"max_size_mb": 0.001, "max_latency_ms": None, "max_accuracy_drop": None})
    t0 = time.time()
    pareto = Search(config=config, run_dir=tmp_path / "run").search()
    assert time.time() - t0 < 55
    log = (tmp_path / "run" / "run.log").read_text()
    lines = [line for line in log.splitlines() if "budget check" in line]
    assert len(lines) == 1 and lines[0].endswith(
        "budget check on onnxruntime: the most compressed configuration (prune=sleepy) dropped from the check: "
        "step timeout: prune sleepy ran past 5s (search.step_timeout)"), log
    assert not (tmp_path / "run" / "probe.json").exists()
    rows = records(tmp_path / "run")
    assert [r["state"] for r in rows] == ["complete"] and rows[0]["feasible"] is False
    assert pareto["trials_finished"] == 1


def test_on_ray_a_timed_out_step_fails_and_a_hung_one_is_force_cancelled(ray_cluster, tmp_path, tiny_config_dict):
    from autocompress.execution.ray import RayExecutor

    warm = [{"mode": "sleep", "seconds": 60}, {"mode": "blocked", "seconds": 60}, {"mode": "ok", "seconds": 0}]
    config = make_config(tmp_path, tiny_config_dict, warm, executor="ray", workers=2, cpus_per_trial=1)
    executor = RayExecutor(workers=2, cpus_per_trial=1, run_dir=tmp_path / "run", step_grace_s=2)
    t0 = time.time()
    pareto = Search(config=config, run_dir=tmp_path / "run", executor=executor).search()
    assert time.time() - t0 < 110
    by_mode = {r["choices"]["prune"][1]["mode"]: r for r in records(tmp_path / "run")}
    assert by_mode["sleep"]["state"] == "fail"
    assert by_mode["sleep"]["reason"] == "step timeout: prune sleepy ran past 5s (search.step_timeout)"
    assert by_mode["sleep"]["worker_pid"]  # it came back from its worker, which lives on
    hung = by_mode["blocked"]
    assert hung["state"] == "fail" and hung["timed_out"] == {"step": "prune sleepy", "limit_s": 5.0}
    assert hung["reason"] == ("step timeout: prune sleepy ran past 5s (search.step_timeout); "
                              "force-cancelled 2s later: it did not return to Python")
    assert by_mode["ok"]["state"] == "complete"
    assert pareto["trials_failed"] == 2 and pareto["trials_finished"] == 1


def test_off_the_main_thread_the_watchdog_raises_in_the_steps_thread(tmp_path):
    import threading

    out = {}

    def step():
        try:
            with watchdog.timed_step("trial 7", "prune loop", limit=0.5, folder=tmp_path):
                while True:  # Python code: interrupted between bytecodes
                    sum(range(100))
        except watchdog.StepTimeout as err:
            out["reason"] = err.reason

    worker = threading.Thread(target=step)
    worker.start()
    worker.join(timeout=20)
    assert out == {"reason": "step timeout: prune loop ran past 0.5s (search.step_timeout)"}
    assert not (tmp_path / watchdog.STEP_FILE).exists()


STALE_ALT_STACK = '''
import ctypes, time
from autocompress.trial import watchdog
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
class Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]
size = 1 << 16
addr = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
assert libc.sigaltstack(ctypes.byref(Stack(addr, 0, size)), None) == 0
libc.munmap(addr, size)  # a native library frees the alternate stack it set up, and leaves it registered
try:
    with watchdog.timed_step("trial 0", "prune sleepy", limit=0.5):
        time.sleep(5)
except watchdog.StepTimeout as err:
    print(err.reason)
'''


def test_a_stale_alternate_signal_stack_does_not_turn_the_timeout_into_a_crash():
    # what killed the whole test suite (SIGSEGV) once a Ray driver, OpenVINO and NNCF had run in its
    # process: Python's handlers run on the alternate signal stack, which a library had freed
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("sigaltstack through glibc")
    done = subprocess.run([sys.executable, "-c", STALE_ALT_STACK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "step timeout: prune sleepy ran past 0.5s (search.step_timeout)"
