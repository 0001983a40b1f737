"""Does the joint search beat single methods, random search and the peer? (issues: Proof; Match
the best peer, part 5; spending the night is ``spend.py``)

On the shared base ``../shared/models/resnet18-cifar10.pth`` (timm resnet18, CIFAR-10, 32x32, no
re-training), a CIFAR-10 subset (``--samples`` images of train, split 75/25 into train/val, and
``--samples`` test images), batch 1, 2 threads, in one run:

1. **Runtimes.** The fp32 base measured on torch (eager), ONNX Runtime and OpenVINO back to back;
   the fastest is the reference of every ratio below ("vs base" = vs the base on its fastest runtime).
2. **Arms** at the same trial budget and seeds, no latency/size budget, no warm start:
       joint          prune x distill x quantize, default sampler (TPE)
       random         the same space, random sampling
       prune_only     channel pruning + a label fine-tune (logit_kd with alpha=0: no teacher)
       quantize_only  static int8 variants
       distill_only   logit distillation (+ a smaller student with student_kd)
3. **The peer** (OpenVINO runtime): NNCF int8 alone, and the hand pipeline 50 % channel pruning +
   a short fine-tune (logit_kd, 2 epochs) + NNCF int8.

Hypervolume: of the front over (accuracy, latency, size), every objective made base-relative and
minimised: ((base top-1 - top-1) / 5 pp, latency / fastest base latency, size / base size), reference
point (1, 1, 1) = the base on its fastest runtime, 5 pp less accurate. A latency ratio comes from
the trial's rounds interleaved with the base artefact of its own runtime, scaled by the base
runtimes' ratio from step 1 (so noise between runs does not enter it). Also measured: latency
repeatability (CV over repeated measurements of one artefact) and re-measurement of front
artefacts in a fresh session vs their in-search figure.

    python benchmarks/proof.py                                   # ~60 min on 2 cores
    python benchmarks/proof.py --seeds 0 --trials 2 --samples 400  # ~4 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BASE_WEIGHTS = SHARED / "models" / "resnet18-cifar10.pth"
CIFAR = SHARED / "datasets" / "cifar10"
ACCURACY_SCALE_PP = 5.0

def arms(kd_epochs: int = 2) -> dict[str, tuple[str, dict]]:
    """``{arm: (sampler, search space)}``; fine-tunes last 1 to ``kd_epochs`` epochs."""
    kd = {"epochs": {"low": 1, "high": kd_epochs, "step": 1}, "lr": [3e-4, 1e-3]}
    full = {
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1}}},
        "distill": {"none": {}, "logit_kd": kd},
        "quantize": {"none": {}, "int8_static": {}},
    }
    return {
        "joint": ("tpe", full),
        "random": ("random", full),
        "prune_only": ("tpe", {
            "prune": {"channel_prune": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1}}},
            "distill": {"logit_kd": {**kd, "alpha": 0.0}},
        }),
        "quantize_only": ("tpe", {
            "quantize": {"int8_static": {"calibration": ["minmax", "percentile", "entropy"],
                                         "per_channel": [True, False], "keep_first_last_float": [False, True]}},
        }),
        "distill_only": ("tpe", {"distill": {"logit_kd": kd}}),
    }


ARMS = arms()
PEERS = {
    "nncf_alone": {"quantize": {"nncf_int8": {"subset_size": 512}}},
    "hand_pipeline": {"prune": {"channel_prune": {"ratio": 0.5}}, "distill": {"logit_kd": {"epochs": 2, "lr": 1e-3}},
                      "quantize": {"nncf_int8": {"subset_size": 512}}},
}


def run_config(args, seed: int, space_file: Path, *, sampler: str = "tpe", runtime="onnxruntime",
               trials: int | None = None, timeout: float | None = None, budget: dict | None = None,
               search: dict | None = None) -> dict:
    meta = json.loads(BASE_WEIGHTS.with_suffix(".json").read_text())
    return {
        "model": {"name": "resnet18", "num_classes": 10, "img_size": 32, "checkpoint": str(BASE_WEIGHTS),
                  "train_epochs": 0},
        "data": {"source": "imagefolder", "path": str(CIFAR), "max_samples": args.samples, "batch_size": 64,
                 "val_fraction": 0.25, "mean": meta["mean"], "std": meta["std"], "seed": 0},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None, **(budget or {})},
        "device": {"threads": 2, "warmup": 20, "repeats": 50, "rounds": 5, "runtime": runtime},
        "search": {"sampler": sampler, "trials": trials or args.trials, "timeout": timeout, "seed": seed,
                   "warm_start": False, **(search or {})},
        "search_space": str(space_file),
    }


def run_search(run_dir: Path, config: dict, space: dict, prepare_only: bool = False) -> float:
    """Runs (or reuses, when ``done`` exists) one search; returns its wall seconds."""
    import yaml

    from autocompress.config.schema import load_config
    from autocompress.search.controller import Search

    if (run_dir / "done").exists():
        print(f"{run_dir.name}: cached")
        return float((run_dir / "done").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    space_file = Path(config["search_space"])
    space_file.write_text(yaml.safe_dump(space))
    cfg_file = run_dir.parent / f"config-{run_dir.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    t0 = time.time()
    search = Search(config=load_config(cfg_file), run_dir=run_dir)
    if prepare_only:
        search.validate()
        search.prepare()
    else:
        search.search()
    wall = round(time.time() - t0, 1)
    (run_dir / "done").write_text(str(wall))
    return wall


class Reference:
    """The base on each runtime (step 1) and ratios against the fastest."""

    def __init__(self, base: dict) -> None:
        self.by_runtime = base.get("by_runtime") or {base["metrics"]["runtime"]: base["metrics"]}
        self.fastest = min(self.by_runtime, key=lambda rt: self.by_runtime[rt]["latency_ms"])
        self.base = self.by_runtime[self.fastest]

    def latency_x(self, record: dict) -> float:
        """A record's latency divided by the fastest base latency."""
        m = record["metrics"]
        own = self.by_runtime.get(m["runtime"])
        if record.get("latency_vs_base") and own:
            return record["latency_vs_base"] * own["latency_ms"] / self.base["latency_ms"]
        return m["latency_ms"] / self.base["latency_ms"]

    def point(self, record: dict, accuracy: float) -> list[float]:
        m = record["metrics"]
        return [(accuracy - m["accuracy"]) / ACCURACY_SCALE_PP, self.latency_x(record), m["size_mb"] / self.base["size_mb"]]


def summarise(run_dir: Path, ref: Reference, wall: float) -> dict:
    from autocompress.objectives.front import hypervolume
    from autocompress.store.run_folder import RunFolder

    pareto = json.loads((run_dir / "pareto.json").read_text())
    base_accuracy = pareto["base"]["accuracy"]  # this run's validation split
    records = RunFolder(run_dir).trials()
    front = pareto["front"]
    full = {r["number"]: r for r in records}
    pts = [ref.point(full.get(r["number"], r), base_accuracy) for r in front]
    ok = [r for r in front if r["metrics"]["accuracy"] >= base_accuracy - 1.0]
    best = None
    if ok:
        b = min(ok, key=lambda r: ref.latency_x(full.get(r["number"], r)) * r["metrics"]["size_mb"])
        m = b["metrics"]
        best = {"number": b["number"], "accuracy": m["accuracy"], "test_accuracy": m["test_accuracy"],
                "latency_x": round(1 / ref.latency_x(full.get(b["number"], b)), 2),
                "size_x": round(ref.base["size_mb"] / m["size_mb"], 2), "runtime": m["runtime"],
                "precision": m["precision"], "choices": b["choices"]}
    return {
        "hypervolume": round(hypervolume(pts, [1.0, 1.0, 1.0]), 5), "wall_s": wall,
        "finished": pareto["trials_finished"], "failed": pareto["trials_failed"],
        "stopped": sum(bool(r.get("stopped")) for r in records),
        "front": len(front), "best_within_1pp": best, "throughput": pareto.get("throughput"),
        "front_points": [[r["metrics"]["accuracy"], round(ref.latency_x(full.get(r["number"], r)), 4),
                          r["metrics"]["size_mb"], r["metrics"]["runtime"]] for r in front],
    }


def latency_repeatability(run_dir: Path, artefact: str, runtime: str, threads: int, times: int = 10) -> dict:
    """CV of ``times`` measurements (each: 5 rounds x 50 calls, median) of one artefact."""
    from autocompress.config.schema import load_config
    from autocompress.data import load_data
    from autocompress.measure.accuracy import measure_latency
    from autocompress.plugin.contract import Artefact
    from autocompress.measure.runtimes import get_runtime

    config = load_config(run_dir / "config.yaml")
    data = load_data(config.data, config.model.img_size)
    predict = get_runtime(runtime).load(Artefact(run_dir / artefact, runtime), threads=threads)
    medians = []
    for _ in range(times):
        lat = measure_latency({"a": predict}, data.test.example(1), warmup=20, repeats=50, rounds=5, threads=threads)
        medians.append(lat["a"].median_ms)
    mean = statistics.fmean(medians)
    return {"artefact": artefact, "medians_ms": medians, "cv": round(statistics.pstdev(medians) / mean, 4)}


def remeasure_front(run_dir: Path, threads: int = 2) -> list[dict]:
    """Each front artefact loaded in a fresh session and timed with the base artefact interleaved:
    its latency ratio to the base now vs the ratio recorded during the search."""
    from autocompress.config.schema import load_config
    from autocompress.data import load_data
    from autocompress.measure.accuracy import measure_latency
    from autocompress.plugin.contract import Artefact
    from autocompress.store.run_folder import RunFolder
    from autocompress.measure.runtimes import get_runtime

    config = load_config(run_dir / "config.yaml")
    data = load_data(config.data, config.model.img_size)
    pareto = json.loads((run_dir / "pareto.json").read_text())
    records = {r["number"]: r for r in RunFolder(run_dir).trials()}
    out = []
    for row in pareto["front"]:
        m = row["metrics"]
        runtime = get_runtime(m["runtime"])
        predict = runtime.load(Artefact(run_dir / row["artefact"], m["runtime"]), threads=threads)
        base = runtime.load(Artefact(run_dir / "base" / f"model{runtime.suffix}", m["runtime"]), threads=threads)
        lat = measure_latency({"trial": predict, "base": base}, data.test.example(1), warmup=20, repeats=50,
                              rounds=5, threads=threads)
        now = lat["trial"].median_ms / lat["base"].median_ms
        then = records[row["number"]].get("latency_vs_base")
        out.append({"number": row["number"], "search_ms": m["latency_ms"], "again_ms": lat["trial"].median_ms,
                    "search_vs_base": then, "again_vs_base": round(now, 4),
                    "ratio_change": round(now / then - 1, 4) if then else None})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8, help="trials per arm and seed")
    parser.add_argument("--samples", type=int, default=2000, help="images per split cap (train is split 75/25 into train/val)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--kd-epochs", type=int, default=2, help="upper end of the fine-tune epochs range of the arms")
    parser.add_argument("--no-peer", action="store_true", help="skip the NNCF rows (also skipped without openvino/nncf)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proof")
    args = parser.parse_args(argv)
    if not BASE_WEIGHTS.is_file() or not (CIFAR / "train").is_dir():
        print(f"skipped: needs {BASE_WEIGHTS} and {CIFAR} (the shared base and CIFAR-10)")
        return 0
    from autocompress.device.machine import describe
    from autocompress.plugin.registry import discover

    registry = discover(ROOT / "plugins")
    names = set(registry.names())
    has_openvino = "nncf_int8" in names and _importable("openvino", "nncf")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # 1. the base on every runtime, back to back
    runtimes = ["torch", "onnxruntime"] + (["openvino"] if has_openvino else [])
    rt_dir = args.out / "runtimes"
    run_search(rt_dir, run_config(args, 0, args.out / "space-runtimes.yaml", runtime=runtimes, trials=1),
               {"quantize": {"none": {}}}, prepare_only=True)
    base_record = json.loads((rt_dir / "base.json").read_text())
    ref = Reference(base_record)
    print(f"base: {ref.base['accuracy']:.2f}% val; fastest runtime {ref.fastest} "
          + ", ".join(f"{rt} {m['latency_ms']:.3f} ms" for rt, m in ref.by_runtime.items()))

    results = []
    # 2. the arms
    for seed in args.seeds:
        for arm in args.arms:
            sampler, space = arms(args.kd_epochs)[arm]
            space = json.loads(json.dumps(space))
            if arm == "distill_only" and "student_kd" in names:
                space["distill"]["student_kd"] = {"epochs": {"low": 1, "high": args.kd_epochs, "step": 1}}
            run_dir = args.out / f"{arm}-s{seed}"
            wall = run_search(run_dir, run_config(args, seed, args.out / f"space-{arm}.yaml", sampler=sampler), space)
            results.append({"group": "arm", "arm": arm, "seed": seed, **summarise(run_dir, ref, wall)})
            print(json.dumps({k: results[-1][k] for k in ("arm", "seed", "hypervolume", "wall_s", "finished", "failed")}))
    # 3. the peer, in the same run
    if has_openvino and not args.no_peer:
        for peer, space in PEERS.items():
            run_dir = args.out / f"{peer}-s0"
            wall = run_search(run_dir, run_config(args, 0, args.out / f"space-{peer}.yaml", runtime="openvino", trials=1),
                              space)
            results.append({"group": "peer", "arm": peer, "seed": 0, **summarise(run_dir, ref, wall)})
            print(json.dumps({k: results[-1][k] for k in ("arm", "hypervolume", "wall_s", "finished", "failed")}))
    first = args.out / f"joint-s{args.seeds[0]}"
    rep, again = None, []
    if "joint" in args.arms:
        pareto = json.loads((first / "pareto.json").read_text())
        if pareto["front"]:
            row = pareto["front"][0]
            rep = latency_repeatability(first, row["artefact"], row["metrics"]["runtime"], 2)
            again = remeasure_front(first)
    summary = {"results": results, "reference": {"fastest": ref.fastest, "by_runtime": ref.by_runtime},
               "latency_repeatability": rep, "remeasured_front": again, "argv": sys.argv[1:],
               "machine": describe(2), "total_wall_s": round(time.time() - t_start, 1)}
    (args.out / "proof.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, args.out)
    return 0


def _importable(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def _ratio(a: float, b: float) -> str:
    if b > 0:
        return f"{a / b:.2f}x"
    return "n/a (both 0)" if a == 0 else "∞ (the other is 0)"


def _median_range(values: list[float], fmt: str = "{:.4f}") -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def write_report(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    ref = summary["reference"]
    base = ref["by_runtime"][ref["fastest"]]
    text = [f"Machine: {summary['machine'].get('cpu', '?')}, {summary['machine'].get('cpu_count')} CPUs; total wall {summary['total_wall_s'] / 60:.1f} min; "
            f"`python benchmarks/proof.py {' '.join(summary['argv'])}`.", "",
            "fp32 base (shared resnet18 CIFAR-10 checkpoint) on each runtime, measured back to back: "
            + ", ".join(f"{rt} {m['latency_ms']:.3f} ms" for rt, m in ref["by_runtime"].items())
            + f"; reference = **{ref['fastest']}**, val top-1 {base['accuracy']:.2f} %, test top-1 "
              f"{base['test_accuracy']:.2f} %, {base['size_mb']:.2f} MB.", "",
            "| search | hypervolume median (min–max) | wall s median | finished / failed / stopped | "
            "best within 1 pp of base: faster x, smaller x, val top-1 (per seed) |",
            "|---|---|---|---|---|"]
    for group in ("arm", "peer"):
        for arm in dict.fromkeys(r["arm"] for r in results if r["group"] == group):
            rs = [r for r in results if r["group"] == group and r["arm"] == arm]
            best = [r["best_within_1pp"] for r in rs]
            best_txt = "; ".join(f"{b['latency_x']}x, {b['size_x']}x, {b['accuracy']:.2f}%" if b else "none"
                                 for b in best)
            text.append(f"| {arm} | {_median_range([r['hypervolume'] for r in rs])} | "
                        f"{statistics.median([r['wall_s'] for r in rs]):.0f} | "
                        f"{sum(r['finished'] for r in rs)} / {sum(r['failed'] for r in rs)} / "
                        f"{sum(r['stopped'] for r in rs)} | {best_txt} |")
    arms = {a: [r["hypervolume"] for r in results if r["group"] == "arm" and r["arm"] == a]
            for a in dict.fromkeys(r["arm"] for r in results if r["group"] == "arm")}
    if "joint" in arms:
        joint = statistics.median(arms["joint"])
        singles = {a: statistics.median(v) for a, v in arms.items() if a.endswith("_only")}
        text.append("")
        if singles:
            best_single = max(singles, key=singles.get)
            text.append(f"Joint vs best single method ({best_single}): hypervolume ratio "
                        f"**{_ratio(joint, singles[best_single])}** (target ≥ 1.2x).")
        if "random" in arms:
            text.append(f"Joint vs random search: **{_ratio(joint, statistics.median(arms['random']))}** (target ≥ 1.1x).")
    rep = summary.get("latency_repeatability")
    if rep:
        text += ["", f"Latency repeatability: {len(rep['medians_ms'])} measurements (5 rounds x 50 calls each) of one "
                     f"front artefact: CV **{rep['cv'] * 100:.1f} %** (medians {min(rep['medians_ms']):.3f}–"
                     f"{max(rep['medians_ms']):.3f} ms; target ≤ 3 %)."]
    if summary.get("remeasured_front"):
        changes = [abs(r["ratio_change"]) for r in summary["remeasured_front"] if r["ratio_change"] is not None]
        absolute = [abs(r["again_ms"] / r["search_ms"] - 1) for r in summary["remeasured_front"]]
        text.append(f"Front artefacts reloaded in a fresh session ({len(absolute)}): latency vs the in-search figure "
                    f"differs by median {statistics.median(absolute) * 100:.1f} % (max {max(absolute) * 100:.1f} %) in ms, "
                    f"{statistics.median(changes) * 100:.1f} % (max {max(changes) * 100:.1f} %) as a ratio to the "
                    f"base timed beside it (target within 10 %).")
    (out / "proof.md").write_text("\n".join(text) + "\n")

    panels = [a for a in dict.fromkeys(r["arm"] for r in results if r["group"] == "arm")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), sharey=True, sharex=True, squeeze=False)
    for ax, arm in zip(axes[0], panels):
        for r in (r for r in results if r["group"] == "arm" and r["arm"] == arm):
            pts = sorted(r["front_points"], key=lambda p: p[1])
            ax.plot([p[1] for p in pts], [p[0] for p in pts], "o-", ms=4, label=f"seed {r['seed']}")
        if arm == "joint":
            for r in (r for r in results if r["group"] == "peer"):
                for p in r["front_points"]:
                    ax.plot([p[1]], [p[0]], "s", ms=7, mfc="none", label=r["arm"].replace("_", " "))
        ax.axhline(base["accuracy"] - 1, color="grey", ls=":", lw=1)
        ax.plot([1.0], [base["accuracy"]], "k*", ms=10, label="base")
        ax.set_title(arm)
        ax.set_xlabel(f"latency / base on {ref['fastest']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("val top-1 (%)")
    fig.suptitle("Pareto fronts (accuracy vs batch-1 latency); dotted: base − 1 pp")
    fig.tight_layout()
    fig.savefig(out / "proof_fronts.png", dpi=120)
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
