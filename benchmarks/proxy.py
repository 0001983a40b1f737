"""Does a cheap score of an untrained structure rank structures as their fine-tunes do? (issue 21)

For every finished, fine-tuned trial of the given run folders, the trial's pruning is applied again
to the run's base (untrained, seconds) and scored three ways: top-1 as pruned, top-1 after
BatchNorm recalibration on 256 training images (``autocompress.measure.recalibrated_top1``, what
the pipeline records as ``record.proxy`` at a trial's structure probe), and the kept parameter
count (the naive guess: bigger keeps more). Each is compared with the trial's fine-tuned validation
top-1 by Spearman's rank correlation, among trials of the same fine-tune length (rung) and over all.

    python benchmarks/proxy.py RUN_DIR [RUN_DIR ...] [--out benchmarks/results/proxy.md]

Reads the run's ``config.yaml``, its base weights and its ``trials.jsonl``; loads the run's data
(the full CIFAR-10 takes ~1 min); ~2 s per distinct structure on 2 cores. Records that already carry
``proxy`` (runs from after it was added) are scored again all the same, so the figures compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); ``None`` under 3 pairs or with no spread."""
    if len(xs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(xs, ys).statistic
    return None if rho != rho else float(rho)


def _epochs(record: dict) -> float | None:
    name, params = (record["choices"].get("distill") or ["none", {}])[:2]
    return params.get("epochs") if name != "none" else None


def score_run(run: Path) -> tuple[list[dict], dict]:
    """The scored trials of one run folder, and what was read."""
    import torch

    from autocompress.config import load_config
    from autocompress.data import load_data
    from autocompress.measure import count_params, module_predictor, recalibrated_top1, top1
    from autocompress.models import create_model
    from autocompress.plugin import NONE, discover
    from autocompress.store.run_folder import RunFolder
    from autocompress.trial.base import load_base_weights

    config = load_config(run / "config.yaml")
    torch.set_num_threads(config.device.threads)
    t0 = time.time()
    data = load_data(config.data, config.model.img_size)
    base = create_model(config.model.model_copy(update={"pretrained": False, "checkpoint": None}),
                        config.model.num_classes or data.num_classes)
    base.load_state_dict(load_base_weights(run))
    base.eval()
    registry = discover(config.plugins_dir)
    ctx = SimpleNamespace(example_input=data.train.example(1), original=None, structure_only=True, data=data,
                          seed=config.search.seed, batch_size=config.data.batch_size)
    rows, seen = [], {}
    for r in RunFolder(run).trials():
        if r.get("number", -1) < 0 or r.get("state") != "complete" or r.get("stopped") or not r.get("metrics"):
            continue
        name, params = (r["choices"].get("prune") or [NONE, {}])[:2]
        if name == NONE or _epochs(r) is None or (r.get("lineage") or {}).get("used"):
            continue  # unpruned, not fine-tuned, or started from another trial's model: not a structure's own score
        key = json.dumps([name, params], sort_keys=True)
        if key not in seen:
            t = time.perf_counter()
            module = registry.get(name).from_params(params).apply(copy.deepcopy(base), ctx).eval()
            seen[key] = {"raw": top1(module_predictor(module), data.val.sample(1024, seed=config.search.seed)),
                         "proxy": recalibrated_top1(module, data.train, data.val, seed=config.search.seed,
                                                    batch_size=config.data.batch_size),
                         "params": count_params(module), "seconds": time.perf_counter() - t}
        rows.append({"run": str(run), "number": r["number"], "prune": params, "epochs": _epochs(r),
                     "val": r["metrics"]["accuracy"], **seen[key]})
    return rows, {"run": str(run), "data_s": round(time.time() - t0, 1), "structures": len(seen)}


def table(rows: list[dict]) -> list[str]:
    lines = ["| trials | n | Spearman: recalibrated top-1 | Spearman: top-1 as pruned | Spearman: parameters |",
             "|---|---:|---:|---:|---:|"]
    groups = {f"fine-tuned {e:g} epochs": [r for r in rows if r["epochs"] == e]
              for e in sorted({r["epochs"] for r in rows})}
    groups["all"] = rows
    for label, group in groups.items():
        val = [r["val"] for r in group]
        cells = [spearman([r[k] for r in group], val) for k in ("proxy", "raw", "params")]
        lines.append(f"| {label} | {len(group)} | " + " | ".join("n/a" if c is None else f"{c:+.2f}" for c in cells)
                     + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy.md")
    args = parser.parse_args(argv)
    rows, read = [], []
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            print(f"{run}: not a run folder (no config.yaml)")
            return 2
        got, info = score_run(run.resolve())
        rows += got
        read.append(info)
    lines = ["# Cheap proxy vs fine-tuned accuracy (issue 21)", "",
             f"`python benchmarks/proxy.py {' '.join(map(str, args.runs))}`; runs: "
             + "; ".join(f"`{i['run']}` ({i['structures']} structures)" for i in read) + ".", "",
             "Spearman rank correlation with each trial's fine-tuned validation top-1 (trials pruned from the base; "
             "lineage trials left out). Recalibrated: BatchNorm statistics re-estimated on 256 training images, "
             "top-1 on 1,024 validation images.", ""] + table(rows) + [
             "", "| run | trial | pruning | epochs | val % | recalibrated % | as pruned % | params |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["epochs"], -r["val"])):
        shown = ", ".join(f"{k}={v}" for k, v in r["prune"].items() if k not in ("importance", "round_to"))
        lines.append(f"| {Path(r['run']).parent.name} | {r['number']} | {shown} | {r['epochs']:g} | {r['val']:.2f} | "
                     f"{r['proxy']:.2f} | {r['raw']:.2f} | {r['params']:,} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
