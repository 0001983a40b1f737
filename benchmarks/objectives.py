"""The seed's goals as objectives (issue 19): params, MACs, int8 MACs, memory and energy, measured.

A short real search on the shared CIFAR-10 ResNet-18 (``../shared``; the embedded digits demo
where it is missing) with ``objectives: [accuracy, macs, memory]`` and a budget (at most half the
base's MACs, at most 15 pp below its top-1: two KD epochs on 1,500 images do not recover more), then the figures of the base and of the front's models as the run recorded them, and
the peak memory of the base and of the front's smallest-MACs model measured three more times in
fresh processes (its spread). Energy is measured where the machine has a counter (RAPL, NVML),
otherwise it is ``n/a`` with the reason the run recorded.

    python benchmarks/objectives.py                 # ~5 min on 2 cores (8 trials, 2,000 images per split)
    python benchmarks/objectives.py --trials 4 --samples 600   # ~2 min smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proof import BASE_WEIGHTS, CIFAR, ROOT, run_config, run_search  # noqa: E402

SPACE = {
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.1}}},
    "distill": {"none": {}, "logit_kd": {"epochs": 2, "lr": 1e-3}},
    "quantize": {"none": {}, "int8_static": {}},
    "warm_start": [
        {"quantize": "int8_static"},
        {"prune": {"channel_prune": {"ratio": 0.5}}, "distill": "logit_kd", "quantize": "int8_static"},
        {"prune": {"channel_prune": {"ratio": 0.5}}, "distill": "logit_kd"},
    ],
}


def digits_config(args, space_file: Path) -> dict:
    return {"model": {"name": "resnet18"}, "data": {"source": "digits"},
            "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 15.0},
            "device": {"threads": 2}, "search": {"trials": args.trials, "timeout": None, "seed": 0},
            "search_space": str(space_file)}


def row(name: str, m: dict, config: str) -> dict:
    why = m.get("not_measured") or {}
    return {"model": name, "val_top1": m["accuracy"], "test_top1": m.get("test_accuracy"), "latency_ms": m["latency_ms"],
            "size_mb": m["size_mb"], "params": m["params"], "macs": m.get("macs"), "macs_int8": m.get("macs_int8"),
            "memory_mb": m.get("memory_mb"), "energy_mj": m.get("energy_mj"), "energy_source": m.get("energy_source"),
            "energy_na": why.get("energy_mj"), "precision": m["precision"], "configuration": config}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2000, help="CIFAR-10 images per split cap")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "objectives")
    args = parser.parse_args(argv)
    from autocompress.results.display import describe_choices
    from autocompress.measure.footprint import measure_memory
    from autocompress.device.machine import describe
    from autocompress.plugin.contract import Artefact

    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    shared = BASE_WEIGHTS.is_file() and (CIFAR / "train").is_dir()
    cfg = (run_config(args, 0, args.out / "space.yaml", trials=args.trials, budget={"max_accuracy_drop": 15.0},
                      search={"warm_start": True, "early_stop": "front"})
           if shared else digits_config(args, args.out / "space.yaml"))
    cfg["objectives"] = ["accuracy", "macs", "memory"]
    t0 = time.time()
    # the MACs budget is half the base's: the base is measured first (prepare), then the search runs with it
    ref = args.out / "reference"
    run_search(ref, {**cfg, "search": {**cfg["search"], "trials": 1}}, {"quantize": {"none": {}}}, prepare_only=True)
    base_macs = json.loads((ref / "base.json").read_text())["metrics"]["macs"]
    cfg["budget"] = {**cfg["budget"], "max_macs": round(base_macs / 2)}
    wall = run_search(run_dir, cfg, SPACE)
    pareto = json.loads((run_dir / "pareto.json").read_text())
    base = json.loads((run_dir / "base.json").read_text())
    rows = [row("base", base["metrics"], "no compression")]
    for r in pareto["front"]:
        rows.append(row(f"trial {r['number']}", r["metrics"], describe_choices(r["choices"])))
    # memory again, three times each in fresh processes: how much it moves between measurements
    smallest = min(pareto["front"], key=lambda r: r["metrics"]["macs"]) if pareto["front"] else None
    repeats = {}
    for name, rec in [("base", base), *([(f"trial {smallest['number']}", smallest)] if smallest else [])]:
        m = rec["metrics"]
        art = Artefact(run_dir / rec["artefact"], m["runtime"], m["precision"])
        repeats[name] = [measure_memory(art, threads=cfg["device"]["threads"], device="cpu", shape=[1, 3, 32, 32])[0]
                         for _ in range(3)]
    summary = {"data": "CIFAR-10 (shared), ResNet-18 checkpoint" if shared else "digits (embedded), resnet18 trained here",
               "objectives": pareto["objectives"], "budget": pareto["budget"], "rows": rows, "memory_repeats": repeats,
               "trials": pareto["trials_finished"], "search_wall_s": wall, "total_wall_s": round(time.time() - t0, 1),
               "energy": json.loads((run_dir / "machine.json").read_text()).get("energy"), "machine": describe(2),
               "argv": sys.argv[1:]}
    (args.out / "objectives.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, args.out / "objectives.md")
    print((args.out / "objectives.md").read_text())
    return 0


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def write_report(summary: dict, path: Path) -> None:
    lines = [f"# Objectives: params, MACs, int8 MACs, memory, energy ({summary['data']})", "",
             f"`python benchmarks/{Path(__file__).name} {' '.join(summary['argv'])}`".replace(" `", "`"), "",
             f"Objectives {', '.join(summary['objectives'])}; budget "
             + ", ".join(f"{k} = {v}" for k, v in summary["budget"].items() if v is not None)
             + f"; {summary['trials']} trials finished, search {summary['search_wall_s']:.0f} s.",
             f"Machine: {summary['machine'].get('cpu')}, {summary['machine'].get('cpu_count')} cores. "
             f"Energy: {summary['energy'].get('source') or 'not available: ' + str(summary['energy'].get('not_available'))}.",
             "", "| model | val top-1 % | test top-1 % | latency ms | size MB | params | MACs | int8 MACs | memory MB | "
                 "energy mJ | precision | configuration |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        energy = (f"{r['energy_mj']:.4f} ({r['energy_source']})" if r["energy_mj"] is not None else "n/a")
        lines.append(f"| {r['model']} | {r['val_top1']:.2f} | {_fmt(r['test_top1'], '.2f')} | {r['latency_ms']:.3f} | "
                     f"{r['size_mb']:.2f} | {r['params']:,} | {_fmt(r['macs'], ',')} | {_fmt(r['macs_int8'], ',')} | "
                     f"{_fmt(r['memory_mb'], '.1f')} | {energy} | {r['precision']} | {r['configuration']} |")
    lines += ["", "Peak memory of one inference measured three more times in fresh processes (MB): "
              + "; ".join(f"{k}: {', '.join(f'{v:.1f}' for v in vs)} (median {statistics.median(vs):.1f})"
                          for k, vs in summary["memory_repeats"].items()) + "."]
    if summary["rows"] and summary["rows"][0]["energy_na"]:
        lines.append(f"Energy n/a: {summary['rows'][0]['energy_na']}.")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
