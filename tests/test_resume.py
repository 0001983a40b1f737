"""Overnight runs that survive faults: the controller is SIGKILLed at several points (and
Ctrl-C'd once), resumed each time with ``autocompress search --resume``, and no completed
trial is lost or re-run; the study, trials.jsonl and pareto.json stay consistent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autocompress.config.schema import load_config
from autocompress.search.controller import Search
from conftest import write_yaml

SPACE = {  # continuous ratio: two trials with equal choices would be a re-run
    "prune": {"channel_prune": {"ratio": {"low": 0.2, "high": 0.7}}},
    "distill": {"logit_kd": {"epochs": [2]}},
}
TRIALS = 6


def config_file(tmp_path: Path, tiny: dict, **search) -> Path:
    data = {**tiny, "search_space": str(write_yaml(tmp_path / "space.yaml", SPACE))}
    data["model"] = {**tiny["model"], "train_epochs": 4}  # a wider window to kill the base training in
    data["budget"] = {**tiny["budget"], "max_accuracy_drop": 100.0}  # every trial feasible: a non-empty front
    # every trial is to complete: no structure skipped on its proxy
    data["search"] = {**tiny["search"], "trials": TRIALS, "proxy_gate": None, **search}
    return write_yaml(tmp_path / "run.yaml", data)


def records(run: Path) -> dict[int, dict]:
    path = run / "trials.jsonl"
    if not path.exists():
        return {}
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # polled while the controller appends: that line is not done yet
        lines.pop()
    return {r["number"]: r for r in map(json.loads, lines)}


def study_of(run: Path) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")


def _default_sigint() -> None:
    # a shell's background job ignores SIGINT, and children inherit that: give Ctrl-C its usual meaning
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Controller:
    """``autocompress search`` in a subprocess."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = open(tmp_path / f"cli-{time.time_ns()}.log", "w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", *args, "-q"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_default_sigint)

    def wait_until(self, condition, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"controller exited ({self.proc.returncode}) before the kill point:\n"
                            + Path(self.log.name).read_text()[-3000:])
            if time.time() > deadline:
                self.kill()
                pytest.fail("kill point not reached in time")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc

    def finish(self, timeout: float = 240.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        assert rc == 0, Path(self.log.name).read_text()[-3000:]
        return rc


def working(run: Path) -> set[int]:
    """Trials with a work folder (a SIGKILLed one leaves its folder behind)."""
    return {int(d.name) for d in (run / "trials").glob("*") if (d / "tmp").is_dir()} if (run / "trials").is_dir() else set()


def mid_trial(run: Path, before: set[int]):
    """A trial of this process has begun working and has no record yet."""
    return lambda: bool(working(run) - before - set(records(run)))


def running_number(run: Path, before: set[int]) -> int:
    return min(working(run) - before - set(records(run)))


def test_sigkill_at_any_point_then_resume_loses_nothing(tmp_path, tiny_config_dict):
    cfg, run = config_file(tmp_path, tiny_config_dict), tmp_path / "run"

    # 1. killed while training the base model
    c = Controller(tmp_path, str(cfg), "--out", str(run))
    c.wait_until(lambda: "base: training" in ((run / "run.log").read_text() if (run / "run.log").exists() else ""))
    assert c.kill() == -signal.SIGKILL
    assert (run / "config.yaml").exists() and not records(run)

    # 2. killed after two trials
    c = Controller(tmp_path, "--resume", str(run))
    c.wait_until(lambda: len(records(run)) >= 2)
    c.kill()
    kept = {n: r for n, r in records(run).items() if r["state"] == "complete"}
    assert len(kept) >= 2
    # the next trial may already have started when the kill came: it is stopped like the one in 3.
    # (a trial killed between its record and Optuna's tell is RUNNING too, but its record stands)
    killed_early = {t.number for t in study_of(run).trials
                    if t.state == optuna.trial.TrialState.RUNNING} - set(records(run))

    # 3. killed mid-trial
    before = working(run)
    c = Controller(tmp_path, "--resume", str(run))
    c.wait_until(mid_trial(run, before))
    killed = running_number(run, before)
    c.kill()
    kept.update({n: r for n, r in records(run).items() if r["state"] == "complete"})
    assert killed not in records(run)
    assert study_of(run).trials[killed].state == optuna.trial.TrialState.RUNNING

    # 4. Ctrl-C mid-trial: graceful, recorded and re-queued at once
    before = working(run)
    c = Controller(tmp_path, "--resume", str(run))
    c.wait_until(mid_trial(run, before))
    interrupted = running_number(run, before)
    assert c.kill(signal.SIGINT) == 130
    kept.update({n: r for n, r in records(run).items() if r["state"] == "complete"})
    # normally the trial is stopped and re-queued; if library code inside it swallowed the
    # KeyboardInterrupt (torch-pruning has bare excepts), it finishes and the search stops after it
    ctrl_c = records(run)[interrupted]
    assert ctrl_c["reason"] == "interrupted (Ctrl-C); re-queued" or ctrl_c["state"] == "complete", ctrl_c
    if ctrl_c["state"] != "complete":
        assert study_of(run).get_trials(states=(optuna.trial.TrialState.WAITING,))

    # 5. resumed to the end
    Controller(tmp_path, "--resume", str(run)).finish()
    final = records(run)
    for n, r in kept.items():  # no completed trial lost or changed
        assert final[n] == r
    complete = {n: r for n, r in final.items() if r["state"] == "complete"}
    stopped = {n: r for n, r in final.items() if r.get("interrupted")}
    assert len(complete) == TRIALS and set(final) == set(complete) | set(stopped)
    assert set(stopped) == ({killed, interrupted} | killed_early) - ({interrupted} if ctrl_c["state"] == "complete" else set())
    assert stopped[killed]["reason"].startswith("interrupted: the search stopped while it ran")
    choices = [json.dumps(r["choices"], sort_keys=True) for r in complete.values()]
    assert len(set(choices)) == len(choices), "a completed trial was run again"
    for n in stopped:  # each stopped trial's configuration was re-queued and then run
        if n in killed_early and not final[n]["choices"]:
            continue  # the step-2 kill came between Optuna's ask and recording its configuration: none to re-run
        again = [m for m, r in complete.items() if r["choices"] == final[n]["choices"]]
        assert again and min(again) > n
    study = study_of(run)
    by_state = {s: {t.number for t in study.trials if t.state == s} for s in optuna.trial.TrialState}
    assert by_state[optuna.trial.TrialState.COMPLETE] == set(complete)
    assert by_state[optuna.trial.TrialState.FAIL] == set(stopped)
    assert not by_state[optuna.trial.TrialState.RUNNING] and not by_state[optuna.trial.TrialState.WAITING]
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["trials_finished"] == TRIALS and pareto["trials_interrupted"] == len(stopped)
    assert pareto["front"] and {r["number"] for r in pareto["front"]} <= set(complete)
    assert not list(run.glob(".pareto.json.*"))  # no half-written temporaries left


def test_resume_reconciles_a_crash_between_the_writes(tmp_path, tiny_config_dict):
    config = load_config(config_file(tmp_path, tiny_config_dict, trials=2))
    run = tmp_path / "run"
    Search(config=config, run_dir=run).search()
    lines = (run / "trials.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    # killed after trial 1 was told but while its line was being written: a torn last line
    (run / "trials.jsonl").write_text(lines[0] + "\n" + lines[1][:50])
    # killed after trial 2's record was stored in the study, before the line and the tell
    study = study_of(run)
    trial = study.ask()
    stored = {**first, "number": trial.number}
    trial.set_user_attr("record", stored)
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING

    config.search.trials = 3
    pareto = Search(config=config, run_dir=run).search()
    final = records(run)
    assert final == {0: first, 1: second, 2: stored}  # restored from the study, not re-run
    assert json.loads((run / "trials.jsonl").read_text().splitlines()[1]) == second
    study = study_of(run)
    assert len(study.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.trials[2].values == study.trials[0].values
    assert pareto["trials_finished"] == 3


def test_journal_storage_url(tmp_path, tiny_config_dict):
    config = load_config(config_file(tmp_path, tiny_config_dict, trials=1, storage="journal://study.log"))
    run = tmp_path / "run"
    Search(config=config, run_dir=run).search()
    assert (run / "study.log").exists() and not (run / "study.db").exists()
    config.search.trials = 2
    Search(config=config, run_dir=run).search()  # resumes from the journal
    assert sorted(records(run)) == [0, 1]
