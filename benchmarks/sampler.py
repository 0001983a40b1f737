"""Which Optuna sampler copes with per-stage widths? (issue 21)

A structure-only search on the shared base (no fine-tuning, so it takes minutes): ``channel_prune`` with
``stage_ratios`` (one ratio per timm ``feature_info`` stage, 0.3..0.85 step 0.05, l2, ``round_to`` 8)
is applied to the trained base; each structure is scored by the cheap proxy the pipeline records
(``autocompress.measure.recalibrated_top1``: BatchNorm re-estimated on 256 training images, top-1 on
1,024 validation images) and must meet two constraints:

* parameters <= 16 % of the base's (what 25x smaller needs at one byte per int8 weight: a bound
  derived from the parameter count, labelled so, not a size measured on disk);
* latency <= ``--latency`` x the base, **measured** on ONNX Runtime fp32, batch 1, 2 threads, the
  structure and the base timed in interleaved rounds (only for structures within the parameter bound).

Each sampler maximises the proxy under these constraints (the constraint values are handed to the
samplers that take them) for ``--trials`` trials and ``--seeds`` seeds, one after the other:
``tpe-multivariate`` (autocompress's default: multivariate, grouped, constant liar), ``tpe-independent``
(one estimator per parameter; Optuna 5's own default is multivariate), ``gp`` (``GPSampler``), ``nsga2``
and ``random``.

    python benchmarks/sampler.py [--trials 40] [--seeds 1] [--latency 0.3] [--out benchmarks/results/sampler.md]

~3 s per trial on 2 cores (prune, proxy, ONNX export, 3 interleaved rounds); needs ``../shared``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import night  # noqa: E402  (the shared base, data and machine description of the night benchmark)

LOW, HIGH, STEP = 0.3, 0.85, 0.05
PARAMS_SHARE = 0.16


def make_sampler(name: str, seed: int):
    """The sampler; constraints reach it through ``Trial.set_constraint`` (Optuna 5), as in the search."""
    import optuna

    if name == "tpe-multivariate":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "tpe-independent":
        return optuna.samplers.TPESampler(seed=seed, multivariate=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS = ["tpe-multivariate", "tpe-independent", "gp", "nsga2", "random"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.3, help="latency bound, x the base (ORT fp32)")
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS, choices=SAMPLERS)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampler.md")
    args = parser.parse_args(argv)
    problem = night.missing_shared()
    if problem:
        print(problem)
        return 0

    import optuna
    import torch

    from autocompress.config import RunConfig
    from autocompress.data import load_data, normalisation
    from autocompress.measure import count_params, recalibrated_top1
    from autocompress.measure.accuracy import measure_latency
    from autocompress.measure.runtimes import get_runtime
    from autocompress.models import create_model, model_stages
    from autocompress.plugin import discover

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(night.THREADS)
    config = RunConfig.model_validate(night.run_config(max_samples=args.max_samples))
    config.data.mean, config.data.std, _ = normalisation(config.model, config.data)
    data = load_data(config.data, config.model.img_size)
    base = create_model(config.model, 10).eval()
    stages = len(model_stages(base))
    base_params = count_params(base)
    prune = discover().get("channel_prune")
    ort = get_runtime("onnxruntime")
    example = data.train.example(1)
    work = Path(tempfile.mkdtemp(prefix="autocompress-sampler-"))
    base_predict = ort.load(ort.save(base, example, work / "base.onnx"), threads=night.THREADS)
    ctx = SimpleNamespace(example_input=example, original=None, structure_only=True, data=data, seed=0,
                          batch_size=config.data.batch_size)
    seen: dict[tuple, dict] = {}

    def score(ratios: tuple) -> dict:
        if ratios in seen:
            return seen[ratios]
        t = time.perf_counter()
        module = prune.from_params({"stage_ratios": list(ratios), "importance": "l2", "round_to": 8}).apply(
            copy.deepcopy(base), ctx).eval()
        out = {"params": count_params(module), "latency_vs_base": None,
               "proxy": recalibrated_top1(module, data.train, data.val, batch_size=config.data.batch_size)}
        if out["params"] <= PARAMS_SHARE * base_params:
            predict = ort.load(ort.save(module, example, work / "s.onnx"), threads=night.THREADS)
            lat = measure_latency({"s": predict, "b": base_predict}, example, warmup=10, repeats=20, rounds=3,
                                  threads=night.THREADS)
            out["latency_vs_base"] = lat["s"].median_ms / lat["b"].median_ms
        out["seconds"] = time.perf_counter() - t
        seen[ratios] = out
        return out

    def violations(s: dict) -> list[float]:
        params = s["params"] / base_params - PARAMS_SHARE
        latency = (s["latency_vs_base"] - args.latency) if s["latency_vs_base"] is not None else 1.0
        return [params, latency]

    rows = []
    t_all = time.time()
    for seed in range(args.seeds):
        for name in args.samplers:
            study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed))
            best, best_at, feasible, t0, tried = None, None, 0, time.time(), []
            for i in range(args.trials):
                trial = study.ask()
                ratios = tuple(round(trial.suggest_float(f"stage_ratios.{k}", LOW, HIGH, step=STEP), 4)
                               for k in range(stages))
                s = score(ratios)
                v = violations(s)
                tried.append(list(ratios))
                for k, value in zip(("params", "latency"), v):
                    trial.set_constraint(k, value)
                study.tell(trial, s["proxy"])
                if all(x <= 0 for x in v):
                    feasible += 1
                    if best is None or s["proxy"] > best[1]["proxy"]:
                        best, best_at = (ratios, s), i + 1
            rows.append({"sampler": name, "seed": seed, "trials": args.trials, "feasible": feasible,
                         "best_proxy": best[1]["proxy"] if best else None, "best_at": best_at,
                         "best": {"stage_ratios": best[0], **best[1]} if best else None,
                         "seconds": round(time.time() - t0, 1), "tried": tried,
                         "distinct": len(set(map(tuple, tried)))})
            r = rows[-1]
            print(f"{name:<17} seed {seed}: {feasible:2d}/{args.trials} feasible ({r['distinct']} distinct), best proxy "
                  f"{r['best_proxy'] if r['best_proxy'] is not None else float('nan'):.2f} % at trial {best_at} "
                  f"({r['seconds']:.0f} s)", flush=True)

    m = night.machine()
    lines = ["# Which sampler copes with per-stage widths (issue 21)", "",
             f"Written {dt.datetime.now():%Y-%m-%d %H:%M} by `{night.command_line()}`; machine {m.get('cpu')} "
             f"({', '.join(m.get('int8_flags', []))}), {night.THREADS} threads; {len(seen)} distinct structures scored "
             f"in {time.time() - t_all:.0f} s.", "",
             (f"Search: `channel_prune` `stage_ratios` ({stages} stages of resnet18, {LOW}..{HIGH} step {STEP}, l2, "
              f"round_to 8) on the shared base; maximise the proxy (top-1 % after BatchNorm recalibration, 1,024 "
              f"validation images) under parameters <= {PARAMS_SHARE:.0%} of the base (a bound from the parameter "
              f"count, not a measured size) and latency <= {args.latency}x the base (measured: ORT fp32, batch 1, "
              f"interleaved with the base, 3 rounds x 20 calls). {args.trials} trials per sampler and seed."), "",
             "| sampler | seed | feasible / trials (distinct) | best proxy % | found at trial | best: stage ratios, params, latency vs base | s |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        b = r["best"]
        lines.append(f"| {r['sampler']} | {r['seed']} | {r['feasible']} / {r['trials']} ({r['distinct']}) | "
                     + (f"{r['best_proxy']:.2f} | {r['best_at']} | {list(b['stage_ratios'])}, {b['params']:,}, "
                        f"{b['latency_vs_base']:.3f}x" if b else "none | - | -")
                     + f" | {r['seconds']:.0f} |")
    if args.seeds > 1:
        lines += ["", "| sampler | mean best proxy % | mean feasible |", "|---|---:|---:|"]
        for name in args.samplers:
            mine = [r for r in rows if r["sampler"] == name]
            bests = [r["best_proxy"] for r in mine if r["best_proxy"] is not None]
            lines.append(f"| {name} | {sum(bests) / len(bests) if bests else float('nan'):.2f} | "
                         f"{sum(r['feasible'] for r in mine) / len(mine):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": m}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
