"""Search widths, not one ratio: 25x smaller and 4x faster within 1 pp (issue 21).

The night benchmark's setting (``benchmarks/night.py``: the shared base, full CIFAR-10, validation
and test halves of the test folder, ONNX Runtime and OpenVINO, 2 threads, batch 1) with the issue's
target as the budget: top-1 drop <= 1 pp, latency <= 0.25x the base (4x faster), size <= the base's
fp32 ONNX size / 25 (1.789 MB). Each arm searches pruning (``channel_prune``, l2, ``round_to`` 8)
+ logit KD + int8 (ORT static or NNCF), the fidelity ladder and the proxy gate at their defaults:

    python benchmarks/widths.py arm widths [--hours 0.5]
        One ratio per timm ``feature_info`` stage (``stage_ratios``, ``size: stages``, 0.3..0.9).
    python benchmarks/widths.py arm uniform --uniform [--hours 0.5]
        One global ratio (0.3..0.9), the search as it was.
    /path/to/python-with-modelopt benchmarks/widths.py fastnas [--epochs N]
        The peer: ModelOpt FastNAS (``mtp.prune(mode="fastnas")``) at the MACs of the widths arm's best
        model (feasible if any, else the most accurate within the latency and size budgets), scored on
        the same 1,024 validation images the proxy reads, BatchNorm calibrated on 2,048 training
        images; then the same fine-tune (that model's KD parameters and epochs) and the same quantizer
        and runtime; test top-1, size, and latency timed in one interleaved run with the base and
        our model. Needs ``nvidia-modelopt`` (and ``torchprofile==0.0.4``); without it, one line says so.
    python benchmarks/widths.py report
        Writes ``benchmarks/results/widths.md``: each arm's front, the peer, the target check, and the
        proxy's rank correlation with the fine-tuned accuracy over the arms' first-rung trials.

``--out DIR`` moves the results from ``benchmarks/results/widths``; ``--max-samples N`` caps every
split for a smoke run. The arms take their hours plus ~5 min each; the peer ~2 min plus its fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import night  # noqa: E402  (setting, arms and report helpers shared with the night benchmark)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "widths"
BASE_ONNX_MB = 44.717102  # the shared base as fp32 ONNX (benchmarks/results/night/hand.json)
SMALLER, FASTER, WITHIN_PP = 25.0, 4.0, 1.0
BUDGET = {"max_accuracy_drop": WITHIN_PP, "max_latency_vs_base": round(1 / FASTER, 4),
          "max_size_mb": round(BASE_ONNX_MB / SMALLER, 3), "max_latency_ms": None}
RATIOS = {"low": 0.3, "high": 0.9, "step": 0.05}


def describe(choices: dict) -> str:
    """The configuration in words (a per-stage pruning without the global ratio it leaves unused)."""
    name, params = (choices.get("prune") or ["none", {}])[:2]
    if "stage_ratios" in params and params["stage_ratios"] is not None:
        choices = {**choices, "prune": [name, {k: v for k, v in params.items() if k != "ratio"}]}
    return night._describe(choices)


def search_space(uniform: bool) -> dict[str, Any]:
    """Pruning (per stage, or one ratio) + logit KD + int8; nothing uncompressed, which the budget rules out."""
    prune: dict[str, Any] = {"importance": "l2", "round_to": 8}
    if uniform:
        prune["ratio"] = dict(RATIOS)
    else:
        prune["stage_ratios"] = {**RATIOS, "size": "stages"}
    return {"prune": {"channel_prune": prune}, "distill": {"logit_kd": {}},
            "quantize": {"int8_static": {}, "nncf_int8": {}}}


def arm(args: argparse.Namespace) -> int:
    raw = night.run_config(max_samples=args.max_samples, hours=args.hours)
    raw["budget"] = dict(BUDGET)
    label = "one global ratio" if args.uniform else "one ratio per stage"
    return night.run_arm(args.out / args.name, search_space(args.uniform), raw, label=label,
                         info={"name": args.name, "uniform": args.uniform, "control": False, "hours": args.hours,
                               "max_samples": args.max_samples})


# -- the peer --------------------------------------------------------------------------------------

def ours(a: dict) -> dict | None:
    """The arm's best: its most accurate (validation) feasible record, else its most accurate record within
    the latency and size budgets."""
    done = [r for r in a["records"] if r.get("state") == "complete" and not r.get("stopped") and r.get("metrics")]
    feasible = [r for r in done if r.get("feasible")]
    within = [r for r in done if r["metrics"]["size_mb"] <= BUDGET["max_size_mb"] and r["_ratio"] is not None
              and r["_ratio"] <= BUDGET["max_latency_vs_base"] * 1.1]
    pool = feasible or within
    return max(pool, key=lambda r: r["metrics"].get("accuracy") or 0.0) if pool else None


def fastnas(args: argparse.Namespace) -> int:
    try:
        import modelopt.torch.prune as mtp
    except ImportError as err:
        print(f"fastnas: skipped: nvidia-modelopt does not import here ({err}); install it (pip install nvidia-modelopt "
              "torchprofile==0.0.4) and run this command with that Python")
        return 0
    import torch

    from autocompress.config import load_config
    from autocompress.data import load_data
    from autocompress.measure import count_params, measure_latency, module_predictor, top1
    from autocompress.measure.runtimes import get_runtime
    from autocompress.models import create_model
    from autocompress.plugin import TrialContext, discover
    from autocompress.trial.base import load_base_weights

    a = night.load_arm(args.out / args.arm)
    if a is None:
        print(f"fastnas: no run in {args.out / args.arm}: run `arm {args.arm}` first")
        return 1
    best = ours(a)
    if best is None:
        print(f"fastnas: the {args.arm} arm has no model within the latency and size budgets to match")
        return 1
    t_start = time.time()
    run = a["run"]
    config = load_config(run / "config.yaml")
    torch.set_num_threads(night.THREADS)
    data = load_data(config.data, config.model.img_size)
    base = create_model(config.model.model_copy(update={"pretrained": False, "checkpoint": None}),
                        config.model.num_classes or data.num_classes)
    base.load_state_dict(load_base_weights(run))
    base.eval()
    base_macs = a["base"]["metrics"]["macs"]
    share = best["metrics"]["macs"] / base_macs
    kd_name, kd_params = best["choices"]["distill"][:2]
    epochs = args.epochs or (best.get("rung") or {}).get("epochs") or kd_params.get("epochs")
    q_name, q_params = best["choices"]["quantize"][:2]
    runtime = best["choices"]["runtime"][0]
    work = args.out / "fastnas"
    work.mkdir(parents=True, exist_ok=True)
    example = data.train.example(1)
    calibration = list(data.train.batches(64, shuffle=True, seed=config.search.seed, limit=2048))
    scored = data.val.sample(1024, seed=config.search.seed)
    print(f"fastnas: matching trial {best['number']} of {args.arm} ({describe(best['choices'])}): MACs "
          f"{best['metrics']['macs']:,} = {share:.2%} of the base; then {kd_name} {epochs:g} epochs, {q_name} on {runtime}")
    t0 = time.time()
    subnet, _ = mtp.prune(copy.deepcopy(base), mode="fastnas", constraints={"flops": f"{100 * share:.2f}%"},
                          dummy_input=example, config={
                              "data_loader": calibration, "checkpoint": str(work / "search.pth"),
                              "score_func": lambda m: top1(module_predictor(m), scored, batch_size=256)})
    subnet = subnet.eval()
    prune_s = time.time() - t0
    widths = {n: m.out_channels for n, m in subnet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    print(f"  FastNAS: {count_params(subnet):,} params ({prune_s:.0f} s)")

    def context(sub: str) -> TrialContext:
        folder = work / sub
        folder.mkdir(parents=True, exist_ok=True)
        return TrialContext(data=data, teacher=base, device=torch.device("cpu"), runtime=runtime,
                            example_input=example, workdir=folder, seed=config.search.seed,
                            batch_size=config.data.batch_size, threads=night.THREADS)

    registry = discover(config.plugins_dir)
    t0 = time.time()
    tuned = registry.get(kd_name).from_params({**kd_params, "epochs": epochs}).apply(subnet, context("fine_tune"))
    tune_s = time.time() - t0
    tuned = tuned.cpu().eval()
    t0 = time.time()
    artefact = registry.get(q_name).from_params(q_params).apply(copy.deepcopy(tuned), context("quantize"))
    quant_s = time.time() - t0
    rt = get_runtime(runtime)
    peer = rt.load(artefact, threads=night.THREADS)
    ref = get_runtime(a["base"]["metrics"]["runtime"])
    base_artefact = ref.save(base, example, context("base").workdir / f"model{ref.suffix}")
    predictors = {"base": ref.load(base_artefact, threads=night.THREADS), "fastnas": peer}
    mine = run / best["artefact"] if best.get("artefact") else None  # a record's artefact: relative to its run
    if mine is not None and mine.exists():
        from autocompress.plugin import Artefact

        predictors["ours"] = rt.load(Artefact(path=mine, runtime=runtime, precision=best["metrics"].get("precision")
                                              or "int8"), threads=night.THREADS)
    d = config.device
    lat = measure_latency(predictors, data.test.example(1), warmup=d.warmup, repeats=d.repeats, rounds=d.rounds,
                          threads=night.THREADS)
    test = top1(peer, data.test, batch_size=config.data.batch_size)
    val = top1(peer, data.val, batch_size=config.data.batch_size)
    result = {
        "what": "issue 21: ModelOpt FastNAS at the MACs of our best model, the same fine-tune and quantizer",
        "date": dt.datetime.now().isoformat(timespec="seconds"), "command": night.command_line(),
        "machine": night.machine(), "arm": args.arm, "matched_trial": best["number"],
        "matched_choices": best["choices"], "matched_macs": best["metrics"]["macs"], "base_macs": base_macs,
        "fastnas": {"constraint": f"flops {100 * share:.2f}%", "params": count_params(subnet), "widths": widths,
                    "calibration_images": 2048, "score_images": 1024, "seconds": round(prune_s, 1)},
        "fine_tune": {"plugin": kd_name, "params": {**kd_params, "epochs": epochs}, "seconds": round(tune_s, 1),
                      "schedule": "the plugin's one-cycle over the epochs (our trial fine-tuned on the search's rungs)"},
        "quantize": {"plugin": q_name, "params": q_params, "runtime": runtime, "seconds": round(quant_s, 1)},
        "test_top1": round(test, 4), "val_top1": round(val, 4), "size_mb": round(artefact.size_bytes() / 1e6, 6),
        "latency_ms": {k: round(v.median_ms, 4) for k, v in lat.items()},
        "latency_vs_base": {k: round(v.median_ms / lat["base"].median_ms, 4) for k, v in lat.items()},
        "wall_s": round(time.time() - t_start, 1),
    }
    night.write_json(args.out / "fastnas.json", result)
    print(f"  FastNAS peer: test {test:.2f} %, val {val:.2f} %, {result['size_mb']:.2f} MB, "
          f"{result['latency_vs_base']['fastnas']:.3f}x the base"
          + (f" (ours {result['latency_vs_base']['ours']:.3f}x in the same run)" if "ours" in lat else ""))
    return 0


# -- report ----------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "not read (front models only)" if value is None else f"{value:.2f}"


def _pp(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def search_time(a: dict, r: dict) -> float | None:
    """Seconds of search before the record finished, from the arm's start; a resumed run's idle gap left out
    (its clock restarts at the resumed base measurement, ``base.json``)."""
    info, finished = a["info"], night._finish(r) if r.get("started") else None
    if finished is None or not info.get("started"):
        return r.get("_t")
    first_end = info.get("finished") or finished
    if finished <= first_end:
        return finished - info["started"]
    return (first_end - info["started"]) + (finished - a["base"].get("started", first_end))


def _ranks(rows: list[dict]) -> tuple[int, float | None]:
    from proxy import spearman  # benchmarks/proxy.py: Spearman's rho, None under 3 pairs or with no spread

    return len(rows), spearman([r["proxy"] for r in rows], [r["metrics"]["accuracy"] for r in rows])


def report(args: argparse.Namespace) -> int:
    out: Path = args.out
    arms = [a for a in (night.load_arm(f) for f in sorted(out.iterdir()) if f.is_dir() and (f / "arm.json").is_file())
            if a]
    if not arms:
        print(f"nothing to report in {out}: run `arm` first")
        return 1
    peer = json.loads((out / "fastnas.json").read_text()) if (out / "fastnas.json").is_file() else None
    lines = ["# Search widths, not one ratio (issue 21)", "",
             f"Written {dt.datetime.now():%Y-%m-%d %H:%M} by `{night.command_line()}` from `{out}`.", "",
             (f"Setting: the night benchmark's (shared base, full CIFAR-10, validation/test halves of the test folder, "
              f"ONNX Runtime and OpenVINO, {night.THREADS} threads, batch 1) with the target as the budget: drop <= "
              f"{WITHIN_PP:g} pp, latency <= {BUDGET['max_latency_vs_base']}x the base, <= {BUDGET['max_size_mb']} MB "
              f"(the base's {BASE_ONNX_MB:.2f} MB / {SMALLER:g}). Top-1 below is on the held-out test half."), "",
             "| arm | trial | configuration | test top-1 % | vs base pp | x smaller | x faster | feasible (val) | at (search time) |",
             "|---|---:|---|---:|---:|---:|---:|---|---|"]
    hits = []
    for a in arms:
        bm = a["base"]["metrics"]
        m0 = a["machine"]
        records = {r["number"]: r for r in a["records"]}
        lines.append(f"| {a['name']} (base, {bm['runtime']}) | | {m0.get('cpu')} | {bm.get('test_accuracy') or float('nan'):.2f}"
                     f" | +0.00 | 1.0 | 1.0 | val {bm.get('accuracy') or float('nan'):.2f} % | |")
        for row in a["pareto"].get("front", []):
            r = records.get(row["number"], {**row, "_t": None, "_ratio": None})
            m, ratio = row["metrics"], r.get("_ratio")
            test = m.get("test_accuracy")
            drop = test - bm["test_accuracy"] if test is not None and bm.get("test_accuracy") is not None else None
            smaller, faster = bm["size_mb"] / m["size_mb"], (1 / ratio if ratio else None)
            if drop is not None and faster and drop >= -WITHIN_PP:
                hits.append((a["name"], row["number"], smaller, faster, drop))
            lines.append(f"| {a['name']} | {row['number']} | {describe(row['choices'])} | "
                         f"{test if test is not None else float('nan'):.2f} | "
                         f"{drop if drop is not None else float('nan'):+.2f} | {smaller:.1f} | "
                         f"{faster or float('nan'):.2f} | yes ({m.get('accuracy') or float('nan'):.2f} %) | "
                         f"{night._hms(search_time(a, r))} |")
        best = ours(a)
        if best is not None and not any(row["number"] == best["number"] for row in a["pareto"].get("front", [])):
            m = best["metrics"]
            test = m.get("test_accuracy")
            lines.append(f"| {a['name']}, best within latency and size (not feasible) | {best['number']} | "
                         f"{describe(best['choices'])} | {_pct(test)} | "
                         f"{_pp(test - bm['test_accuracy'] if test is not None else None)} | "
                         f"{bm['size_mb'] / m['size_mb']:.1f} | {1 / best['_ratio']:.2f} | no "
                         f"({m.get('accuracy') or float('nan'):.2f} %) | {night._hms(search_time(a, best))} |")
    if peer:
        base_test = next((a["base"]["metrics"].get("test_accuracy") for a in arms if a["name"] == peer["arm"]), None)
        r = peer["latency_vs_base"]
        lines.append(f"| FastNAS peer (at trial {peer['matched_trial']}'s MACs; speed from its own timing run) | | "
                     f"{peer['fastnas']['constraint']}, {peer['fastnas']['params']:,} params, "
                     f"{peer['fine_tune']['plugin']} {peer['fine_tune']['params']['epochs']:g} epochs, "
                     f"{peer['quantize']['plugin']} @{peer['quantize']['runtime']} | {peer['test_top1']:.2f} | "
                     f"{(peer['test_top1'] - base_test) if base_test is not None else float('nan'):+.2f} | "
                     f"{BASE_ONNX_MB / peer['size_mb']:.1f} | {1 / r['fastnas']:.2f} | val {peer['val_top1']:.2f} % | "
                     f"{peer['date']} |")
        if "ours" in r:
            lines += ["", (f"Peer latency run (interleaved, same machine): FastNAS {r['fastnas']:.3f}x, our trial "
                           f"{peer['matched_trial']} {r['ours']:.3f}x the base. FastNAS searched {peer['fastnas']['seconds']:g} s; "
                           f"fine-tune {peer['fine_tune']['seconds']:g} s ({peer['fine_tune']['schedule']}).")]
    for a in arms:
        if a["base"].get("started") and a["info"].get("finished") and a["base"]["started"] > a["info"]["finished"]:
            lines += ["", (f"The {a['name']} arm was resumed after its {a['info'].get('hours')} h (`autocompress search "
                           f"--resume`): {night._hms(a['info']['finished'] - a['info']['started'])} in its first "
                           f"session; times count search time only.")]
    lines += ["", ("x smaller: the base's size on disk over the model's; x faster: 1 / the trial's latency ratio to the run's "
                   "reference base timed beside it (pooled over every measurement of the structure where recorded)."), ""]

    lines += ["## Target", ""]
    met = [h for h in hits if h[2] >= SMALLER and h[3] >= FASTER]
    if met:
        n, t, s, f, d = max(met, key=lambda h: h[4])
        lines.append(f"**Target met**: {n} trial {t}, {s:.1f}x smaller, {f:.2f}x faster, {d:+.2f} pp test.")
    else:
        lines.append(f"**Target missed**: no front model is >= {SMALLER:g}x smaller and >= {FASTER:g}x faster within "
                     f"{WITHIN_PP:g} pp." + (" Closest within 1 pp: " + "; ".join(
                         f"{n} trial {t}: {s:.1f}x smaller, {f:.2f}x faster, {d:+.2f} pp" for n, t, s, f, d in
                         sorted(hits, key=lambda h: -min(h[2] / SMALLER, h[3] / FASTER))[:3]) if hits else
                         " No front model is within 1 pp."))

    lines += ["", "## The proxy: which structures earned a fine-tune", "",
              "| arm | first-rung fine-tunes with a proxy | Spearman: proxy vs fine-tuned val top-1 | stopped by the proxy gate | "
              "stopped as structures over budget |", "|---|---:|---:|---:|---:|"]
    pooled = []
    for a in arms:
        firsts = [r for r in a["records"] if r.get("state") == "complete" and not r.get("stopped")
                  and r.get("proxy") is not None and (r.get("metrics") or {}).get("accuracy") is not None
                  and (r.get("rung") or {}).get("index", 0) == 0 and not (r.get("lineage") or {}).get("used")]
        pooled += firsts
        n, rho = _ranks(firsts)
        gated = sum((r.get("stopped") or {}).get("stage") == "proxy" for r in a["records"])
        over = sum((r.get("stopped") or {}).get("stage") == "structure" for r in a["records"])
        lines.append(f"| {a['name']} | {n} | {'n/a' if rho is None else f'{rho:+.2f}'} | {gated} | {over} |")
    n, rho = _ranks(pooled)
    lines.append(f"| both | {n} | {'n/a' if rho is None else f'{rho:+.2f}'} | | |")
    lines += ["", ("Proxy: top-1 % of the untrained structure after BatchNorm recalibration on 256 training images, read "
                   "on 1,024 validation images (`record.proxy`). Fine-tuned: the trial's whole-validation top-1 after its "
                   "first rung (1 epoch of KD), trials pruned from the base only."), ""]
    text = "\n".join(lines) + "\n"
    print(text)
    md = args.md or out.parent / f"{out.name}.md"
    md.write_text(text)
    print(f"wrote {md}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("arm")
    p.add_argument("name")
    p.add_argument("--uniform", action="store_true", help="one global ratio instead of one per stage")
    p.add_argument("--hours", type=float, default=0.5)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("fastnas")
    p.add_argument("--arm", default="widths", help="the arm whose best model's MACs the peer matches")
    p.add_argument("--epochs", type=float, default=None, help="fine-tune epochs (default: that model's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    problem = night.missing_shared()
    if problem:
        print(problem)
        return 0
    args.out = args.out.resolve()
    return {"arm": arm, "fastnas": fastnas, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
