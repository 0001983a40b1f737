"""What timing through ``autocompress agent`` changes: the same artefact timed locally and by an agent on this machine.

Per model (timm, random weights, 32x32, 10 classes, exported to ONNX the way a trial is): ``--repeats``
measurements each of four ways, in rotating order, each with the search's defaults (warm-up 20,
5 rounds of 50 calls, ``--threads`` threads):

* *local*: ``measure_latency`` on the ONNX Runtime predictor the search uses (torch tensors in and out);
* *local numpy*: the agent's predictor (numpy in and out) in this process, which has run torch;
* *fresh process*: the same in a new Python process that has never run torch;
* *agent*: the file sent over HTTP on 127.0.0.1 to ``autocompress agent``, timed there with the
  same loop (:mod:`autocompress.device.timing`).

Printed: the median of the repeats' ``median_ms`` each way, their range, the ratios, and the wall
time of one measurement locally and through the agent (which includes the upload and the load).

    python benchmarks/agent_overhead.py            # ~1 min on 2 cores
    python benchmarks/agent_overhead.py --onnx RUN/trials/0014/model.onnx --out front.json   # a front model
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "mobilenetv3_small_100")
FRESH = """
import sys
import numpy as np
from autocompress.device.sessions import onnx_predictor, onnx_session
from autocompress.device.timing import time_interleaved
predict = onnx_predictor(onnx_session(sys.argv[1], threads=int(sys.argv[2])))
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
print(time_interleaved({"m": predict}, x, warmup=20, repeats=50, rounds=5)["m"].median_ms)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent_overhead.json")
    parser.add_argument("--onnx", type=Path, nargs="+", default=None,
                        help="ONNX artefacts to time instead (e.g. a run's front: RUN/trials/NNNN/model.onnx)")
    args = parser.parse_args(argv)
    from autocompress.device.client import measure_on_agents, wait_ready
    from autocompress.device.machine import describe
    from autocompress.measure.accuracy import measure_latency
    from autocompress.plugin.contract import Artefact
    from autocompress.measure.runtimes import RUNTIMES
    from autocompress.device.sessions import onnx_predictor, onnx_session
    from autocompress.device.timing import time_interleaved

    tmp = Path(tempfile.mkdtemp(prefix="agent-overhead-"))
    token = secrets.token_urlsafe(32)
    (tmp / "token").write_text(token)
    agent = subprocess.Popen([sys.executable, "-m", "autocompress.device.agent", "--port", "0", "--token-file",
                              str(tmp / "token"), "--quiet"], stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        url = re.search(r"http://\S+", agent.stdout.readline()).group(0)
        wait_ready(url, token)
        runtime = RUNTIMES["onnxruntime"]
        example = torch.randn(1, 3, 32, 32)
        timing = dict(warmup=20, repeats=50, rounds=5)
        for name in (args.onnx or MODELS):
            if args.onnx:  # a given artefact, e.g. a front model: timed as it is
                path, name = Path(name), str(name)
            else:
                torch.manual_seed(0)
                model = timm.create_model(name, num_classes=10, pretrained=False).eval()
                path = runtime.save(model, example, tmp / f"{name}.onnx").path
            local, bare, fresh, remote, local_s, remote_s = [], [], [], [], [], []
            arms = ["local", "bare", "fresh", "agent"]
            for r in range(args.repeats):
                for where in arms[r % 4:] + arms[:r % 4]:  # each arm first, second, ... in turn
                    t0 = time.perf_counter()
                    if where == "local":
                        predict = runtime.load(Artefact(path, "onnxruntime"), threads=args.threads)
                        lat = measure_latency({"model": predict}, example, threads=args.threads, **timing)["model"]
                        local.append(lat.median_ms)
                        local_s.append(time.perf_counter() - t0)
                    elif where == "bare":  # the agent's own predictor (numpy in, numpy out), in this process
                        predict = onnx_predictor(onnx_session(str(path), threads=args.threads))
                        array = example.numpy()
                        bare.append(time_interleaved({"model": predict}, array, **timing)["model"].median_ms)
                    elif where == "fresh":  # the same, in a new process that has run no torch
                        done = subprocess.run([sys.executable, "-c", FRESH, str(path), str(args.threads)],
                                              capture_output=True, text=True, check=True)
                        fresh.append(float(done.stdout))
                    else:
                        lat = measure_on_agents([url], token, runtime="onnxruntime", models={"model": [path]},
                                                example=example.numpy(), threads=args.threads, timeout=600,
                                                **timing)[0]["model"]
                        remote.append(lat.median_ms)
                        remote_s.append(time.perf_counter() - t0)
            row = {"model": name, "size_mb": round(path.stat().st_size / 1e6, 2),
                   "local_ms": round(statistics.median(local), 4), "agent_ms": round(statistics.median(remote), 4),
                   "local_numpy_ms": round(statistics.median(bare), 4), "fresh_process_ms": round(statistics.median(fresh), 4),
                   "agent_vs_fresh_process": round(statistics.median(remote) / statistics.median(fresh), 3),
                   "agent_vs_local_numpy": round(statistics.median(remote) / statistics.median(bare), 3),
                   "local_range_ms": [min(local), max(local)], "agent_range_ms": [min(remote), max(remote)],
                   "ratio": round(statistics.median(remote) / statistics.median(local), 3),
                   "local_wall_s": round(statistics.median(local_s), 3),
                   "agent_wall_s": round(statistics.median(remote_s), 3), "local": local, "local_numpy": bare, "fresh_process": fresh,
                   "agent": remote}
            rows.append(row)
            print(f"{name:24s} {row['size_mb']:6.2f} MB  local {row['local_ms']:.4f} ms "
                  f"[{min(local):.4f}-{max(local):.4f}]  agent {row['agent_ms']:.4f} ms "
                  f"[{min(remote):.4f}-{max(remote):.4f}]  agent/local {row['ratio']:.3f}  "
                  f"local numpy predictor {row['local_numpy_ms']:.4f} ms [{min(bare):.4f}-{max(bare):.4f}], "
                  f"agent/that {row['agent_vs_local_numpy']:.3f}  "
                  f"same in a fresh process {row['fresh_process_ms']:.4f} ms [{min(fresh):.4f}-{max(fresh):.4f}], "
                  f"agent/that {row['agent_vs_fresh_process']:.3f}  "
                  f"wall per measurement: local {row['local_wall_s']:.2f} s, agent {row['agent_wall_s']:.2f} s",
                  flush=True)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"argv": sys.argv[1:], "threads": args.threads, "repeats": args.repeats, "timing": timing,
              "machine": describe(args.threads), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
