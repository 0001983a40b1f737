"""Does the joint search beat single methods and random search? (issue: Proof)

Runs, at the same trial budget and seeds, on a timm resnet18 trained on CIFAR-10 (the shared
base ``../shared/models/resnet18-cifar10.pth``, 32x32, no re-training):

    joint          prune x distill x quantize, default sampler (TPE)
    random         the same space, random sampling
    prune_only     channel pruning + a label fine-tune (logit_kd with alpha=0, i.e. no teacher)
    quantize_only  static int8 variants
    distill_only   logit distillation (+ a smaller student when the student_kd plugin exists)

and reports for each: hypervolume of the front over (accuracy, latency, size) with the reference
point (base accuracy - 5 pp, base latency, base size) in base-relative units, wall time, trials
finished/failed, and the best model within 1 pp of the base's accuracy (latency and size ratios).
Also measures latency repeatability (CV of repeated measurements of one artefact).

    python benchmarks/proof.py                       # defaults: 3 seeds x 8 trials, ~45-60 min on 2 cores
    python benchmarks/proof.py --seeds 0 --trials 4 --samples 600   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BASE_WEIGHTS = SHARED / "models" / "resnet18-cifar10.pth"
CIFAR = SHARED / "datasets" / "cifar10"

FULL = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1}}},
    "distill": {"none": {}, "logit_kd": {"epochs": {"low": 1, "high": 2, "step": 1}}},
    "quantize": {"none": {}, "int8_static": {}},
}
ARMS: dict[str, tuple[str, dict]] = {
    "joint": ("tpe", FULL),
    "random": ("random", FULL),
    "prune_only": ("tpe", {
        "prune": {"channel_prune": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1}}},
        "distill": {"logit_kd": {"alpha": 0.0, "epochs": {"low": 1, "high": 2, "step": 1}}},
    }),
    "quantize_only": ("tpe", {
        "quantize": {"int8_static": {"calibration": ["minmax", "percentile", "entropy"],
                                     "per_channel": [True, False], "keep_first_last_float": [False, True]}},
    }),
    "distill_only": ("tpe", {"distill": {"logit_kd": {"epochs": {"low": 1, "high": 2, "step": 1}}}}),
}


def run_config(args, arm: str, seed: int, space_file: Path) -> dict:
    meta = json.loads(BASE_WEIGHTS.with_suffix(".json").read_text())
    sampler = ARMS[arm][0]
    return {
        "model": {"name": "resnet18", "num_classes": 10, "img_size": 32, "checkpoint": str(BASE_WEIGHTS),
                  "train_epochs": 0},
        "data": {"source": "imagefolder", "path": str(CIFAR), "max_samples": args.samples, "batch_size": 64,
                 "val_fraction": 0.25, "mean": meta["mean"], "std": meta["std"], "seed": 0},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None},
        "device": {"threads": 2, "warmup": 20, "repeats": 50, "rounds": 5},
        "search": {"sampler": sampler, "trials": args.trials, "timeout": None, "seed": seed, "warm_start": False},
        "search_space": str(space_file),
    }


def arm_space(arm: str, plugin_names: set[str]) -> dict:
    space = json.loads(json.dumps(ARMS[arm][1]))
    if arm == "distill_only" and "student_kd" in plugin_names:
        space["distill"]["student_kd"] = {"epochs": {"low": 1, "high": 2, "step": 1}}
    return space


def best_within(front_rows: list[dict], base: dict, pp: float = 1.0) -> dict | None:
    ok = [r for r in front_rows if r["metrics"]["accuracy"] >= base["accuracy"] - pp]
    if not ok:
        return None
    best = min(ok, key=lambda r: (r["metrics"]["latency_ms"] * r["metrics"]["size_mb"]))
    m = best["metrics"]
    return {"number": best["number"], "accuracy": m["accuracy"], "test_accuracy": m["test_accuracy"],
            "latency_x": round(base["latency_ms"] / m["latency_ms"], 2), "size_x": round(base["size_mb"] / m["size_mb"], 2),
            "precision": m["precision"], "choices": best["choices"]}


def latency_repeatability(run_dir: Path, artefact: str, runtime: str, threads: int, times: int = 10) -> dict:
    from autocompress.data import load_data
    from autocompress.config import load_config
    from autocompress.measure import measure_latency
    from autocompress.plugin import Artefact
    from autocompress.runtimes import get_runtime

    config = load_config(run_dir / "config.yaml")
    data = load_data(config.data, config.model.img_size)
    predict = get_runtime(runtime).load(Artefact(run_dir / artefact, runtime), threads=threads)
    medians = []
    for _ in range(times):
        lat = measure_latency({"a": predict}, data.test.example(1), warmup=20, repeats=50, rounds=5, threads=threads)
        medians.append(lat["a"].median_ms)
    mean = statistics.fmean(medians)
    return {"artefact": artefact, "medians_ms": medians, "cv": round(statistics.pstdev(medians) / mean, 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2000, help="images per split cap (train is split 75/25 into train/val)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proof")
    args = parser.parse_args(argv)
    if not BASE_WEIGHTS.is_file() or not (CIFAR / "train").is_dir():
        print(f"skipped: needs {BASE_WEIGHTS} and {CIFAR} (the shared base and CIFAR-10)")
        return 0

    import yaml

    from autocompress.config import load_config
    from autocompress.controller import Search
    from autocompress.pareto import hypervolume, normalised_points
    from autocompress.registry import discover

    names = set(discover().names())
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            run_dir = args.out / f"{arm}-s{seed}"
            if (run_dir / "pareto.json").exists() and (run_dir / "done").exists():
                print(f"{arm} seed {seed}: cached")
            else:
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                space_file = run_dir.parent / f"space-{arm}.yaml"
                space_file.write_text(yaml.safe_dump(arm_space(arm, names)))
                cfg_file = run_dir.parent / f"config-{arm}-s{seed}.yaml"
                cfg_file.write_text(yaml.safe_dump(run_config(args, arm, seed, space_file)))
                t0 = time.time()
                Search(config=load_config(cfg_file), run_dir=run_dir).search()
                (run_dir / "done").write_text(str(round(time.time() - t0, 1)))
            pareto = json.loads((run_dir / "pareto.json").read_text())
            base = pareto["base"]
            pts, ref = normalised_points(pareto["front"], base)
            results.append({
                "arm": arm, "seed": seed, "hypervolume": round(hypervolume(pts, ref), 5),
                "wall_s": float((run_dir / "done").read_text()), "finished": pareto["trials_finished"],
                "failed": pareto["trials_failed"], "front": len(pareto["front"]),
                "best_within_1pp": best_within(pareto["front"], base), "base": base,
                "front_points": [[r["metrics"]["accuracy"], r["metrics"]["latency_ms"], r["metrics"]["size_mb"]]
                                 for r in pareto["front"]],
            })
            print(json.dumps({k: results[-1][k] for k in ("arm", "seed", "hypervolume", "wall_s", "finished", "failed")}))
    first = args.out / f"joint-s{args.seeds[0]}"
    pareto = json.loads((first / "pareto.json").read_text())
    rep = None
    if pareto["front"]:
        row = pareto["front"][0]
        rep = latency_repeatability(first, row["artefact"], row["metrics"]["runtime"], 2)
    summary = {"results": results, "latency_repeatability": rep, "argv": sys.argv[1:]}
    (args.out / "proof.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, args.out)
    return 0


def write_report(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    arms = list(dict.fromkeys(r["arm"] for r in results))
    base = results[0]["base"]
    lines = ["| search | hypervolume median (min-max) | wall s median | finished / failed | best within 1 pp: latency x, size x, top-1 |",
             "|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        hv = [r["hypervolume"] for r in rs]
        best = [r["best_within_1pp"] for r in rs if r["best_within_1pp"]]
        best_txt = "; ".join(f"{b['latency_x']}x, {b['size_x']}x, {b['accuracy']:.2f}%" for b in best) or "none"
        lines.append(f"| {arm} | {statistics.median(hv):.4f} ({min(hv):.4f}-{max(hv):.4f}) | "
                     f"{statistics.median([r['wall_s'] for r in rs]):.0f} | "
                     f"{sum(r['finished'] for r in rs)} / {sum(r['failed'] for r in rs)} | {best_txt} |")
    rep = summary.get("latency_repeatability")
    text = [f"Base: resnet18 (shared CIFAR-10 checkpoint), val top-1 {base['accuracy']:.2f}%, test top-1 "
            f"{base['test_accuracy']:.2f}%, {base['latency_ms']:.3f} ms, {base['size_mb']:.2f} MB ({base['runtime']}).",
            "", *lines, ""]
    if rep:
        text.append(f"Latency repeatability: {len(rep['medians_ms'])} measurements of one front artefact, "
                    f"CV {rep['cv'] * 100:.1f} % (medians {min(rep['medians_ms']):.3f}-{max(rep['medians_ms']):.3f} ms).")
    (out / "proof.md").write_text("\n".join(text) + "\n")
    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.6), sharey=True, sharex=True)
    axes = [axes] if len(arms) == 1 else axes
    for ax, arm in zip(axes, arms):
        for r in (r for r in results if r["arm"] == arm):
            pts = sorted(r["front_points"], key=lambda p: p[1])
            ax.plot([p[1] for p in pts], [p[0] for p in pts], "o-", ms=4, label=f"seed {r['seed']}")
        ax.axhline(base["accuracy"] - 1, color="grey", ls=":", lw=1)
        ax.plot([base["latency_ms"]], [base["accuracy"]], "k*", ms=10, label="base")
        ax.set_title(arm)
        ax.set_xlabel("batch-1 latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val top-1 (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Pareto fronts (accuracy vs latency); dotted: base - 1 pp")
    fig.tight_layout()
    fig.savefig(out / "proof_fronts.png", dpi=120)
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
