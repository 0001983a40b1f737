"""Trials per hour in-process vs on Ray (1 and 2 workers), and the controller's overhead per trial.

    python benchmarks/throughput.py                 # 6 trials per mode, writes benchmarks/results/throughput.md
    python benchmarks/throughput.py --trials 20 --modes inprocess ray-2

Every mode runs the same fixed small search (tiny timm ``test_resnet``, 400 digits images,
channel pruning and logit distillation, one thread per trial, random sampler with a fixed
seed) in a fresh run folder. Figures:

* **trials/h**: finished trials / time from the first trial's start to the last one's end
  (Ray's start and the base model's preparation excluded; Ray's worker start-up included).
* **steady trials/h**: the same between the first and the last trial to finish, i.e.
  without the workers' start-up (imports of torch/timm in fresh processes).
* **controller overhead per trial**: time of the search loop spent outside the executor's
  ``submit``/``poll`` (ask, suggest, tell, writing trials.jsonl and pareto.json) / trials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
    "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
    "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 100.0},
    "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
    "search": {"sampler": "random", "timeout": None, "seed": 0, "warm_start": False},
}
SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.7}}},
    "distill": {"none": {}, "logit_kd": {"epochs": [1, 2]}},
}


class Timed:
    """Wraps an executor and adds up the time spent in submit and poll."""

    def __init__(self, inner) -> None:
        self.inner, self.inside = inner, 0.0
        self.slots = inner.slots

    def _time(self, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.inside += time.perf_counter() - t0

    def submit(self, spec):
        return self._time(self.inner.submit, spec)

    def poll(self, timeout=None):
        return self._time(self.inner.poll, timeout)

    def running(self):
        return self.inner.running()

    def cancel_all(self):
        return self.inner.cancel_all()

    def shutdown(self):
        return self.inner.shutdown()


def run_mode(mode: str, trials: int, work: Path) -> dict:
    import yaml

    from autocompress.config.schema import load_config
    from autocompress.search.controller import Search
    from autocompress.execution.executors import InProcessExecutor

    (work / mode).mkdir(parents=True)
    space = work / mode / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    cfg_path = work / mode / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({**CONFIG, "search_space": str(space),
                                        "search": {**CONFIG["search"], "trials": trials}}))
    config = load_config(cfg_path)
    ray_start = None
    if mode == "inprocess":
        inner = InProcessExecutor()
    else:
        from autocompress.execution.ray import RayExecutor

        workers = int(mode.split("-")[1])
        inner = RayExecutor(workers=workers, cpus_per_trial=1, run_dir=work / mode / "run", num_cpus=os.cpu_count())
        t0 = time.perf_counter()
        inner.connect()
        ray_start = time.perf_counter() - t0
    executor = Timed(inner)
    marks: dict[str, float] = {}

    def on_event(kind, payload):
        if kind == "start":
            marks.setdefault("first_start", time.time())

    search = Search(config=config, run_dir=work / mode / "run", executor=executor, on_event=on_event)
    search.validate()
    t0 = time.time()
    search.search()
    end = time.time()
    records = search.run.trials()
    done = [r for r in records if r["state"] == "complete"]
    loop = end - marks["first_start"]
    finish = sorted(r["finished"] for r in done)
    steady = (len(finish) - 1) / (finish[-1] - finish[0]) * 3600 if len(finish) > 1 and finish[-1] > finish[0] else None
    return {
        "mode": mode, "trials": len(records), "failed": len(records) - len(done),
        "ray_start_s": round(ray_start, 2) if ray_start is not None else None,
        "prep_s": round(marks["first_start"] - t0, 2), "loop_s": round(loop, 2),
        "trials_per_h": round(len(done) / loop * 3600, 1),
        "steady_trials_per_h": round(steady, 1) if steady else None,
        "median_trial_s": round(statistics.median(r["duration_s"] for r in done), 2),
        "overhead_per_trial_ms": round((loop - executor.inside) / max(len(records), 1) * 1e3, 1),
        "measure_wait_s": round(sum(r.get("measure_wait_s") or 0 for r in done), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--modes", nargs="+", default=["inprocess", "ray-1", "ray-2"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="acbench-", dir="/tmp"))
    rows = []
    try:
        for mode in args.modes:
            print(f"{mode}: {args.trials} trials ...", flush=True)
            rows.append(run_mode(mode, args.trials, work))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from autocompress.device.machine import describe

    machine = describe(1)
    lines = [
        "# Throughput: in-process vs Ray",
        "",
        f"{dt.datetime.now():%Y-%m-%d %H:%M}, `python benchmarks/throughput.py --trials {args.trials}`; "
        f"{machine.get('cpu', platform.processor())}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}, ray {machine['versions'].get('ray')}, "
        f"optuna {machine['versions'].get('optuna')}.",
        "",
        "Search: test_resnet on 400 digits images, channel_prune ratio 0.2-0.7 and/or logit_kd 1-2 epochs, "
        "no quantization, 1 thread and 1 CPU per trial, random sampler.",
        "",
        "| mode | trials | failed | Ray start s | base prep s | loop s | trials/h | steady trials/h "
        "| median trial s | controller overhead / trial ms | waited for measure slot s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['trials']} | {r['failed']} | {r['ray_start_s'] or '-'} | {r['prep_s']} | "
                     f"{r['loop_s']} | {r['trials_per_h']} | {r['steady_trials_per_h'] or '-'} | {r['median_trial_s']} | "
                     f"{r['overhead_per_trial_ms']} | {r['measure_wait_s']} |")
    lines += [
        "",
        "trials/h counts from the first trial's start (Ray's start-up and the base preparation excluded, "
        "fresh Ray workers' imports included); steady trials/h is between the first and last trial to finish. "
        "Controller overhead is the loop's time outside the executor's submit/poll (ask, suggest, tell, "
        "trials.jsonl, pareto.json). With few trials the start-up of Ray workers dominates; "
        "run with --trials 30 or more for figures that mean something.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
