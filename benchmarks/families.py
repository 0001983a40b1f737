"""The default search on one model of each of several timm families: does any step hang or crash?

Each model runs ``autocompress search`` (the default search space, digits, a 1-epoch base) in its
own process with a short trial count and a step time limit, and the table says how each ended:
trials finished / failed / stopped, front size, the failures' reasons (first one), and wall time.

    python benchmarks/families.py                       # the models below, 4 trials each
    python benchmarks/families.py --models resnet18 efficientformerv2_s0 --trials 6

Writes ``benchmarks/results/families/families.md`` (the run folders beside it are git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "regnetx_002", "convnext_atto",
          "vit_tiny_patch16_224", "efficientformerv2_s0", "mobilevitv2_050"]


def run_one(model: str, out: Path, trials: int, timeout: str, step_timeout: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"name": model, "img_size": 32, "train_epochs": 1},
        "data": {"source": "digits"},
        # a ratio budget fits every family (the default ms budget is the digits resnet18's)
        "budget": {"max_latency_ms": None, "max_latency_vs_base": 0.9, "max_size_mb": None, "max_accuracy_drop": 5.0},
        "search": {"trials": trials, "timeout": timeout, "step_timeout": step_timeout},
    }
    cfg = out / f"{model}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run = out / model
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", str(cfg), "--out", str(run), "-q"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    wall = time.time() - t0
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()] \
        if (run / "trials.jsonl").is_file() else []
    failed = [r for r in records if r["state"] == "fail"]
    front = json.loads((run / "pareto.json").read_text())["front"] if (run / "pareto.json").is_file() else []
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return {"model": model, "exit": proc.returncode, "wall_s": round(wall), "trials": len(records),
            "failed": len(failed), "stopped": sum(r["state"] == "pruned" or bool(r.get("stopped")) for r in records),
            "timed_out": sum(bool(r.get("timed_out")) for r in records), "front": len(front),
            "first_failure": failed[0]["reason"][:120] if failed else "",
            "last_line": last[-1][:160] if last else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--timeout", default="5m")
    parser.add_argument("--step-timeout", default="3m")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "families")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        row = run_one(model, args.out, args.trials, args.timeout, args.step_timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"Default search space, digits, 1-epoch base, {args.trials} trials, --timeout {args.timeout}, "
             f"search.step_timeout {args.step_timeout}; `python benchmarks/families.py`.", "",
             "| model | exit | wall s | trials | failed | stopped | timed out | front | first failure / last line |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r["first_failure"] or (r["last_line"] if r["exit"] else "")
        lines.append(f"| {r['model']} | {r['exit']} | {r['wall_s']} | {r['trials']} | {r['failed']} | {r['stopped']} | "
                     f"{r['timed_out']} | {r['front']} | {note.replace('|', '/')} |")
    (args.out / "families.md").write_text("\n".join(lines) + "\n")
    (args.out / "families.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
