"""A real night on real data: the search must beat an hour of hand work (issue 18).

Setting: the shared base ``../shared/models/resnet18-cifar10.pth`` (timm resnet18, CIFAR-10, 32x32;
its JSON sidecar gives the normalisation) and the full shared CIFAR-10 ImageFolder
``../shared/datasets/cifar10`` with ``data.val_from: test`` (all 50,000 train images train; the
10,000 test images are cut into fixed, stratified halves: 5,000 validation, 5,000 held-out test).
Budget: top-1 drop <= 1 pp, latency <= 0.5x the base timed beside each trial, <= 4 MB; target
runtimes ONNX Runtime and OpenVINO (searched), 2 threads, batch 1.

Each part is its own command, to run as a background job with nothing CPU-heavy beside it:

    python benchmarks/night.py hand [--epochs 5] [--lr 1e-3]
        The hand pipeline, as an hour of hand work with the same libraries would do it:
        channel_prune 50 % (l2, round_to 8), ``--epochs`` of plain cross-entropy fine-tuning
        (AdamW, one-cycle, peak ``--lr``), NNCF int8 on OpenVINO; plus NNCF int8 alone on the
        unpruned base, and the base itself on ONNX Runtime and on OpenVINO. Top-1 on the test half,
        latency of all in one interleaved run, size on disk. Writes OUT/hand.json (+ OUT/hand/).
        ~20 min on 2 cores (5 epochs x ~2-3 min on 50,000 images, data ~1 min, NNCF ~1 min each).
    python benchmarks/night.py arm NAME [--hours 2] [--control]
        Writes OUT/NAME/config.yaml and OUT/NAME/space.yaml and runs ``autocompress search`` on
        them (run folder OUT/NAME/run, ``search.timeout`` = the hours, 10,000 trials so time is the
        limit, warm start on but a space without warm starts). Search arm: the fidelity scheduler
        (``search.rungs: [1, 3, 9]``, emitted only when the schema has the key) and lineage (the
        default). ``--control``: ``search.rungs: null``, ``search.lineage: false``, ``search.sweep: false``,
        ``search.iterate: false`` and logit_kd's epochs searched (1..6); ``search.first_structures`` stays
        at its default unless ``--no-first-structures``. Writes OUT/NAME/arm.json
        (start, end, wall seconds, command, exit status) and OUT/NAME/search.log.
        The hours plus ~5 min (data, the base on two runtimes, the budget check).
    python benchmarks/night.py matched NAME --trial N [--arm search] [--hours 0.2]
        The lineage check at equal length: an arm whose space is fixed to trial N's configuration (of
        arm ``--arm``) with ``search.lineage: false``, so the same pruning, KD parameters, rungs and
        quantizer start from the base; ``report`` then sets each lineage trial beside the best such trial
        of the same pruning and epochs. Trial N's rungs plus ~3 min.
    python benchmarks/night.py arm search --rungs 1 2 4 8
        The search arm on another ladder (default ``[1, 3, 9]``, the schema's default).
    python benchmarks/night.py retime [--rounds 80]
        The hand rows, every arm's base and every feasible record (its trial folder, or the run's
        artefact cache for a dominated one; SHA-256 checked) timed in one interleaved run: OUT/retime.json.
        ``report`` then judges "as fast as hand" on each record's ratio to the hand pipeline paired by
        round. ~1-2 min.
    python benchmarks/night.py report
        Reads OUT/hand.json and every OUT/*/arm.json with its run folder; writes OUT.md
        (``benchmarks/results/night.md`` by default) and prints it: base, hand pipeline, NNCF int8
        alone, each arm's front; per arm the time to the first feasible model, to hand parity and to
        its best; the target check (met or missed). Seconds.
    python benchmarks/night.py all [--hours 2]
        hand, arm search, arm control --control, retime, report, one after the other: ~2 x hours + 30 min.

``--max-samples N`` (hand, arm, all) caps every split at N images (``data.max_samples``) for a quick
smoke run; ``--out DIR`` (every command) moves the results from ``benchmarks/results/night``.

    HF_HUB_OFFLINE=1 python benchmarks/night.py hand --epochs 0.05 --max-samples 600 --out /tmp/nightsmoke
    HF_HUB_OFFLINE=1 python benchmarks/night.py arm smoke --hours 0.05 --max-samples 600 --out /tmp/nightsmoke
    python benchmarks/night.py report --out /tmp/nightsmoke          # ~5 min in all, on 2 cores

Figures compare within one machine (each names its run folder and machine). Latency ratios in the
report are to the faster fp32 base: the hand rows' base is timed in the same interleaved run; a
search trial's ``latency_vs_base`` is to the run's reference base (the fastest runtime's) timed beside
it (``record.base_runtime``); records written before that are to the base on the trial's own runtime,
which the report rescales by the two bases' latencies in the run's ``base.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BASE_WEIGHTS = SHARED / "models" / "resnet18-cifar10.pth"
CIFAR = SHARED / "datasets" / "cifar10"
if str(ROOT) not in sys.path:  # the project's own autocompress, whatever the installed one points at
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "night"
RUNTIMES = ["onnxruntime", "openvino"]
THREADS = 2
BUDGET = {"max_accuracy_drop": 1.0, "max_latency_vs_base": 0.5, "max_size_mb": 4.0, "max_latency_ms": None}
PRUNE = {"ratio": 0.5, "importance": "l2", "round_to": 8}  # the hand pipeline's pruning
WITHIN_PP = 1.0  # "within 1 pp" of the base's test top-1


# -- shared ---------------------------------------------------------------------------------------

def run_config(*, max_samples: int | None, hours: float | None = None, control: bool = False,
               space: Path | None = None, first_structures: bool = True,
               rungs: list[float] | None = None, seed: int = 0) -> dict[str, Any]:
    """The run config of this benchmark as a mapping (the YAML an arm writes).

    Args:
        max_samples: ``data.max_samples`` (``None`` = every image).
        hours: ``search.timeout`` in hours (``None``: no search section beyond the defaults).
        control: The control arm: ``search.rungs: null`` (the fidelity scheduler off), ``search.lineage:
            false``, ``search.sweep: false`` and ``search.iterate: false``.
        space: The search-space file.
        first_structures: ``search.first_structures`` (written only when the schema has it).
        rungs: The search arm's ladder (default ``[1, 3, 9]``, the schema's default).
        seed: ``search.seed`` (the sampler's and every trial's randomness; the data split keeps seed 0, so
            every arm and the hand rows share the same validation and test halves).

    Returns:
        The config mapping; keys the installed schema lacks (``rungs``) are left out.
    """
    from autocompress.config.schema import SearchConfig

    fields = SearchConfig.model_fields
    search: dict[str, Any] = {"trials": 10000, "warm_start": True, "seed": int(seed)}
    if hours is not None:
        search["timeout"] = float(hours) * 3600.0
    if "rungs" in fields:
        search["rungs"] = None if control else list(rungs or [1, 3, 9])
    if "lineage" in fields and control:
        search["lineage"] = False
    if "sweep" in fields and control:  # reusing a finished fine-tune with other quantizers is this work too
        search["sweep"] = False
    if "iterate" in fields and control:  # iterative pruning is lineage work (inert with lineage off; said plainly)
        search["iterate"] = False
    if "first_structures" in fields and not first_structures:
        search["first_structures"] = False
    config: dict[str, Any] = {
        "model": {"name": "resnet18", "num_classes": 10, "img_size": 32, "checkpoint": str(BASE_WEIGHTS),
                  "train_epochs": 0},  # 0: the checkpoint as it is (the default fine-tunes it)
        "data": {"source": "imagefolder", "path": str(CIFAR), "val_from": "test", "max_samples": max_samples},
        "budget": dict(BUDGET),
        "device": {"runtime": list(RUNTIMES), "threads": THREADS},
        "search": search,
    }
    if space is not None:
        config["search_space"] = str(space)
    return config


def search_space(control: bool) -> dict[str, Any]:
    """The searched space: prune none | channel_prune, distill none | logit_kd, quantize none | int8_static |
    nncf_int8; no warm starts. The control arm searches logit_kd's epochs (1..6); the search arm leaves
    them to the fidelity scheduler."""
    return {
        "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.8, "step": 0.1},
                                                "importance": "l2", "round_to": 8}},
        "distill": {"none": {}, "logit_kd": {"epochs": {"low": 1, "high": 6, "step": 1}} if control else {}},
        "quantize": {"none": {}, "int8_static": {}, "nncf_int8": {}},
    }


def missing_shared() -> str | None:
    """One line saying what of ``../shared`` is missing, or ``None``."""
    for need in (BASE_WEIGHTS, BASE_WEIGHTS.with_suffix(".json"), CIFAR / "train", CIFAR / "test"):
        if not need.exists():
            return f"skipped: needs {need} (the shared base and CIFAR-10 under ../shared), which is missing"
    return None


def machine() -> dict[str, Any]:
    """CPU (``lscpu`` model name and int8 flags), threads, library versions and the load average."""
    from autocompress.device.machine import describe

    info = describe(THREADS)
    import importlib.metadata

    for pkg in ("openvino", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # absent: said where it is needed
            info.setdefault("versions", {})[pkg] = importlib.metadata.version(pkg)
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def command_line() -> str:
    """The command that ran, as typed (relative to the project root when inside it)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON, through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


# -- hand ------------------------------------------------------------------------------------------

def hand(args: argparse.Namespace) -> int:
    """The hand pipeline, NNCF int8 alone and the base: top-1 on the test half, latency interleaved, size.

    Writes ``OUT/hand.json`` and keeps the artefacts under ``OUT/hand/``.
    """
    import shutil

    import torch

    from autocompress.config import RunConfig
    from autocompress.data import load_data, normalisation
    from autocompress.measure.accuracy import count_params, measure_latency, module_predictor, top1
    from autocompress.measure.runtimes import get_runtime
    from autocompress.models import create_model
    from autocompress.plugin.contract import TrialContext
    from autocompress.plugin.helpers import fit
    from autocompress.plugin.registry import discover
    from autocompress.trial.pipeline import resolve_devices

    t_start = time.time()
    walls: dict[str, float] = {}
    config = RunConfig.model_validate(run_config(max_samples=args.max_samples))
    mean, std, source = normalisation(config.model, config.data)  # as the search fixes it before loading
    config.data.mean, config.data.std = mean, std
    torch.set_num_threads(THREADS)
    train_device, _ = resolve_devices(config)
    t0 = time.time()
    data = load_data(config.data, config.model.img_size)  # the same split objects the search gets
    walls["data"] = round(time.time() - t0, 1)
    print(f"data: {len(data.train)} train, {len(data.val)} validation, {len(data.test)} test images "
          f"({walls['data']:.0f} s); normalisation from {source}; fine-tune on {train_device}")

    work = args.out / "hand"
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("base", "pruned"):  # a runtime's save does not make its folder
        (work / sub).mkdir(parents=True)
    registry = discover()
    ort, ov = get_runtime("onnxruntime"), get_runtime("openvino")
    example = data.train.example(1)

    def context(sub: str) -> TrialContext:
        folder = work / sub
        folder.mkdir(parents=True, exist_ok=True)
        return TrialContext(data=data, teacher=None, device=train_device, runtime="openvino", example_input=example,
                            workdir=folder, seed=config.search.seed, batch_size=config.data.batch_size,
                            threads=THREADS)

    rows: dict[str, dict[str, Any]] = {}
    predictors: dict[str, Any] = {}

    def add(key: str, name: str, artefact, params: int, make_s: float, notes: str = "") -> None:
        predict = get_runtime(artefact.runtime).load(artefact, threads=THREADS)
        t = time.time()
        test = top1(predict, data.test, batch_size=config.data.batch_size)
        val = top1(predict, data.val, batch_size=config.data.batch_size)
        size = artefact.size_bytes()
        rows[key] = {"name": name, "runtime": artefact.runtime, "precision": artefact.precision,
                     "test_top1": round(test, 4), "val_top1": round(val, 4), "size_bytes": size,
                     "size_mb": round(size / 1e6, 6), "params": params, "make_s": round(make_s, 1),
                     "artefact": str(Path(artefact.path).relative_to(args.out)), "notes": notes}
        predictors[key] = predict
        walls.setdefault("accuracy", 0.0)
        walls["accuracy"] = round(walls["accuracy"] + time.time() - t, 1)
        print(f"  {name:<62} test {test:6.2f}%  val {val:6.2f}%  {size / 1e6:7.2f} MB  ({make_s:.0f} s to make, "
              f"{time.time() - t:.0f} s to evaluate)")

    print("base (fp32)")
    t0 = time.time()
    base = create_model(config.model, 10).eval()
    base_params = count_params(base)
    a = ort.save(base, example, work / "base" / "model.onnx")
    add("base_onnxruntime", "base, fp32, ONNX Runtime", a, base_params, time.time() - t0)
    t0 = time.time()
    a = ov.save(base, example, work / "base" / "model.xml")
    add("base_openvino", "base, fp32, OpenVINO", a, base_params, time.time() - t0)
    walls["base"] = round(sum(rows[k]["make_s"] for k in rows), 1)

    nncf = registry.get("nncf_int8")
    print("NNCF int8 alone (OpenVINO, nncf_int8 defaults)")
    t0 = time.time()
    a = nncf.from_params({}).apply(copy.deepcopy(base), context("nncf_alone"))
    walls["nncf_alone"] = round(time.time() - t0, 1)
    add("nncf_alone", "NNCF int8 alone, OpenVINO", a, base_params, walls["nncf_alone"])

    print(f"hand pipeline: channel_prune {PRUNE}, {args.epochs} epochs of cross-entropy fine-tuning "
          f"(AdamW, one-cycle, peak lr {args.lr:g}), NNCF int8")
    t0 = time.time()
    pruned = registry.get("channel_prune").from_params(PRUNE).apply(copy.deepcopy(base), context("prune"))
    walls["prune"] = round(time.time() - t0, 1)
    pruned_params = count_params(pruned)
    pruned_val = top1(module_predictor(pruned), data.val, batch_size=config.data.batch_size)
    print(f"  pruned: {pruned_params:,} params (base {base_params:,}), val top-1 {pruned_val:.2f}% before fine-tuning "
          f"({walls['prune']:.0f} s)")
    curve: list[list[float]] = []

    def on_epoch(epoch: int, model: torch.nn.Module) -> None:
        acc = top1(module_predictor(model, train_device), data.val, batch_size=config.data.batch_size)
        curve.append([epoch + 1, round(acc, 4), round(time.time() - t0, 1)])
        print(f"  fine-tune epoch {epoch + 1}: val top-1 {acc:.2f}% ({time.time() - t0:.0f} s)")

    t0 = time.time()
    tuned = fit(pruned, context("fine_tune"), epochs=args.epochs, lr=args.lr, on_epoch=on_epoch).cpu().eval()
    walls["fine_tune"] = round(time.time() - t0, 1)
    t0 = time.time()
    a = ort.save(tuned, example, work / "pruned" / "model.onnx")
    add("pruned_fp32", "pruned 50 % + fine-tuned, fp32, ONNX Runtime", a, pruned_params,
        walls["prune"] + walls["fine_tune"] + time.time() - t0)
    t0 = time.time()
    a = nncf.from_params({}).apply(copy.deepcopy(tuned), context("nncf_pipeline"))
    walls["nncf_pipeline"] = round(time.time() - t0, 1)
    add("hand_pipeline", "hand pipeline: pruned 50 % + fine-tuned + NNCF int8, OpenVINO", a, pruned_params,
        walls["prune"] + walls["fine_tune"] + walls["nncf_pipeline"])

    d = config.device
    print(f"latency: {len(predictors)} predictors in one interleaved run, batch 1, {THREADS} threads "
          f"({d.warmup} warm-up calls, {d.rounds} rounds x {d.repeats} calls)")
    t0 = time.time()
    lat = measure_latency(predictors, data.test.example(d.batch_size), warmup=d.warmup, repeats=d.repeats,
                          rounds=d.rounds, threads=THREADS)
    walls["latency"] = round(time.time() - t0, 1)
    fastest = min(("base_onnxruntime", "base_openvino"), key=lambda k: lat[k].median_ms)
    same = {"onnxruntime": "base_onnxruntime", "openvino": "base_openvino"}
    for key, row in rows.items():
        l = lat[key]
        row.update(latency_ms=round(l.median_ms, 4), p10_ms=round(l.p10_ms, 4), p90_ms=round(l.p90_ms, 4),
                   cv=round(l.cv, 4),
                   latency_vs_base=round(l.median_ms / lat[fastest].median_ms, 4),
                   latency_vs_same_runtime_base=round(l.median_ms / lat[same[row["runtime"]]].median_ms, 4),
                   size_vs_base=round(row["size_bytes"] / rows[fastest]["size_bytes"], 4))
    walls["total"] = round(time.time() - t_start, 1)
    result = {
        "what": "issue 18: the hand pipeline, NNCF int8 alone and the base, on the search's data split",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(),
        "data": {**data.summary(), "config": config.data.model_dump(mode="json"), "normalisation": source},
        "base_checkpoint": str(BASE_WEIGHTS),
        "settings": {
            "prune": {"plugin": "channel_prune", **PRUNE},
            "fine_tune": {"epochs": args.epochs, "lr": args.lr, "optimizer": "AdamW (weight decay 0.05)",
                          "schedule": "one-cycle (25 % warm-up)",
                          "loss": "cross-entropy, label smoothing 0.1 (autocompress.plugin.helpers.fit)",
                          "batch_size": config.data.batch_size, "device": str(train_device),
                          "why_lr": "peak lr for fine-tuning a trained CNN after pruning with AdamW: 1e-3 restores "
                                    "a 50 %-pruned model faster than 3e-4 in a few epochs without destroying it"},
            "quantize": {"plugin": "nncf_int8", "params": "defaults (subset_size 300, performance preset)"},
            "latency": {"warmup": d.warmup, "repeats": d.repeats, "rounds": d.rounds, "threads": THREADS,
                        "batch": d.batch_size, "interleaved": True},
        },
        "reference": fastest,
        "hand": "hand_pipeline",
        "pruned_val_before_fine_tune": round(pruned_val, 4),
        "fine_tune_curve": curve,
        "rows": rows,
        "wall_s": walls,
    }
    write_json(args.out / "hand.json", result)
    print(f"reference: {rows[fastest]['name']} ({rows[fastest]['latency_ms']:.3f} ms)")
    for key, row in rows.items():
        print(f"  {row['name']:<62} test {row['test_top1']:6.2f}%  {row['latency_ms']:.3f} ms "
              f"({row['latency_vs_base']:.3f}x the base)  {row['size_mb']:.2f} MB ({row['size_vs_base']:.3f}x)")
    print(f"wrote {args.out / 'hand.json'} ({walls['total']:.0f} s)")
    return 0


# -- arm -------------------------------------------------------------------------------------------

def arm(args: argparse.Namespace) -> int:
    """Writes an arm's config and space and runs ``autocompress search`` on them as a subprocess."""
    raw = run_config(max_samples=args.max_samples, hours=args.hours, control=args.control, space=None,
                     first_structures=not args.no_first_structures, rungs=getattr(args, "rungs", None),
                     seed=getattr(args, "seed", 0))
    label = "control: fidelity scheduler off, epochs searched" if args.control else "search"
    return run_arm(args.out / args.name, search_space(args.control), raw, label=label,
                   info={"name": args.name, "control": args.control, "hours": args.hours,
                         "max_samples": args.max_samples, "rungs": raw["search"].get("rungs", "n/a"),
                         "seed": getattr(args, "seed", 0)})


def run_arm(folder: Path, space: dict[str, Any], raw: dict[str, Any], *, label: str, info: dict[str, Any]) -> int:
    """Writes ``folder/space.yaml`` and ``folder/config.yaml`` (``raw`` with the space) and runs ``autocompress
    search`` on them as a subprocess (run folder ``folder/run``); ``folder/arm.json`` says when and how."""
    import yaml

    from autocompress.config import load_config

    run_dir = folder / "run"
    if (run_dir / "config.yaml").exists():
        print(f"{run_dir} already holds a run; name another arm or remove it")
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    space_file, config_file = folder / "space.yaml", folder / "config.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    raw = {**raw, "search_space": str(space_file.resolve())}
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(config_file)  # a config the schema refuses stops here, before any work
    cmd = [sys.executable, "-m", "autocompress.cli", "search", str(config_file), "--out", str(run_dir), "--quiet"]
    print(f"arm {folder.name} ({label}): {info.get('hours', 0):g} h; search.rungs: "
          f"{raw['search'].get('rungs', 'not in this schema')}")
    print("  " + " ".join(map(shlex.quote, cmd)))
    info = {**info, "command": command_line(), "search_command": " ".join(map(shlex.quote, cmd)),
            "config": str(config_file), "space": str(space_file), "run_dir": str(run_dir), "search": raw["search"],
            "started": time.time(), "date": dt.datetime.now().isoformat(timespec="seconds")}
    write_json(folder / "arm.json", info)
    rc = None
    try:
        with open(folder / "search.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait()
            except KeyboardInterrupt:  # the search got the same Ctrl-C: it records and re-queues, then ends
                rc = proc.wait()
    finally:
        info.update(finished=time.time(), returncode=rc)
        info["wall_s"] = round(info["finished"] - info["started"], 1)
        write_json(folder / "arm.json", info)
    tail = (folder / "search.log").read_text().strip().splitlines()[-4:]
    print("\n".join("  " + line for line in tail))
    print(f"arm {folder.name}: exit {rc}, {info['wall_s']:.0f} s; run folder {run_dir}")
    return 0 if rc == 0 else 1


def matched(args: argparse.Namespace) -> int:
    """An arm fixed to one trial's configuration, with lineage off (each fine-tune starts from the base)."""
    from autocompress.store.run_folder import RunFolder

    source = args.out / args.arm / "run"
    record = next((r for r in RunFolder(source).trials() if r.get("number") == args.trial), None)
    if record is None:
        print(f"matched: no trial {args.trial} in {source}")
        return 2
    choices = record["choices"]
    space: dict[str, Any] = {}
    for stage in ("prune", "distill", "quantize"):
        name, params = (choices.get(stage) or ["none", {}])[:2]
        space[stage] = {name: {k: v for k, v in params.items() if not (stage == "distill" and k == "epochs")}}
    raw = run_config(max_samples=args.max_samples, hours=args.hours, space=None)
    raw["device"]["runtime"] = [choices["runtime"][0]]
    # a one-point space: the first trial climbs the rungs by promotion; later ones repeat it (re-timed only)
    raw["search"].update(lineage=False, first_structures=False, trials=6)
    return run_arm(args.out / args.name, space, raw, label=f"trial {args.trial} of {args.arm}, lineage off",
                   info={"name": args.name, "control": False, "matched": {"arm": args.arm, "trial": args.trial},
                         "hours": args.hours, "max_samples": args.max_samples})


# -- retime ----------------------------------------------------------------------------------------

def _record_artefact(run: Path, r: dict) -> tuple[Any, str] | tuple[None, str]:
    """The artefact a record measured, from its trial folder or (dominated trials' folders are emptied) the
    run's artefact cache; ``(None, why)`` when neither holds files whose SHA-256 matches the record's."""
    import hashlib

    from autocompress.measure.artefact import Artefact

    wanted = {Path(f).name: digest for f, digest in (r.get("files") or {}).items()}
    main = Path(r.get("artefact") or "").name
    if not wanted or not main:
        return None, "the record names no files"

    def matches(folder: Path) -> bool:
        return all((folder / n).is_file() and hashlib.sha256((folder / n).read_bytes()).hexdigest() == d
                   for n, d in wanted.items())

    candidates = [run / Path(r["artefact"]).parent]
    for meta in sorted((run / "cache" / "artefacts").glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            if (json.loads(meta.read_text()).get("meta") or {}).get("trial") == r["number"]:
                candidates.append(meta.with_suffix(""))
    folder = next((c for c in candidates if c.is_dir() and matches(c)), None)
    if folder is None:
        return None, "no files matching the record's SHA-256 (trial folder emptied, cache evicted)"
    runtime = (r.get("metrics") or {}).get("runtime") or (r.get("choices", {}).get("runtime") or [None])[0]
    return Artefact(path=folder / main, runtime=runtime, precision=(r.get("metrics") or {}).get("precision", "fp32"),
                    extra_files=[folder / n for n in wanted if n != main]), str(folder)


def retime(args: argparse.Namespace) -> int:
    """The hand rows, every arm's base and every feasible record of every arm, timed in one interleaved run.

    Each arm times its trials beside its own base, and the hand rows are timed in their own run, so
    their ratios come from different windows of a noisy machine (the base has read 0.69 ms in one and
    1.87 ms in another). This times all of them together, batch 1, ``THREADS`` threads, with
    ``--rounds`` interleaved rounds, and writes OUT/retime.json; ``report`` then judges hand parity on
    these ratios (to the fastest fp32 base of this run). Minutes.
    """
    import torch

    from autocompress.config import RunConfig
    from autocompress.device import paired_ratio
    from autocompress.measure.accuracy import measure_latency
    from autocompress.measure.artefact import Artefact
    from autocompress.measure.runtimes import get_runtime

    out: Path = args.out
    config = RunConfig.model_validate(run_config(max_samples=None))
    d = config.device
    torch.set_num_threads(THREADS)
    hand_data = json.loads((out / "hand.json").read_text()) if (out / "hand.json").is_file() else None
    arms = [a for a in (load_arm(f) for f in sorted(out.iterdir()) if f.is_dir() and (f / "arm.json").is_file()) if a]
    entries: dict[str, dict[str, Any]] = {}
    predictors: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    def add(key: str, artefact: Artefact, **info: Any) -> None:
        predictors[key] = get_runtime(artefact.runtime).load(artefact, threads=THREADS)
        entries[key] = {"runtime": artefact.runtime, "artefact": str(artefact.path),
                        "size_bytes": artefact.size_bytes(), **info}

    if hand_data:
        for key, row in hand_data["rows"].items():
            path = out / row["artefact"]
            extra = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
            add(f"hand:{key}", Artefact(path=path, runtime=row["runtime"], precision=row["precision"],
                                        extra_files=extra), name=row["name"])
    for a in arms:
        base = a["base"]
        for rt, m in (base.get("by_runtime") or {base["metrics"]["runtime"]: base["metrics"]}).items():
            suffix = get_runtime(rt).suffix
            path = a["run"] / "base" / f"model{suffix}"
            if path.is_file():
                extra = [path.with_suffix(".bin")] if suffix == ".xml" else []
                add(f"{a['name']}:base:{rt}", Artefact(path=path, runtime=rt, extra_files=extra),
                    name=f"base, {a['name']} arm, {rt}")
        for r in a["records"]:
            if r.get("state") != "complete" or not r.get("feasible"):
                continue
            artefact, where = _record_artefact(a["run"], r)
            if artefact is None:
                skipped[f"{a['name']}:{r['number']}"] = where
                continue
            add(f"{a['name']}:{r['number']}", artefact, name=f"{a['name']} trial {r['number']}", trial=r["number"],
                arm=a["name"], from_folder=where, in_run_ratio=r["_ratio"])
    bases = [k for k in entries if k.startswith("hand:base_") or ":base:" in k]
    if not bases:
        print(f"nothing to retime in {out}: no base artefact (run `hand` first)")
        return 1
    print(f"retime: {len(predictors)} predictors in one interleaved run, batch 1, {THREADS} threads "
          f"({d.warmup} warm-up calls, {args.rounds} rounds x {d.repeats} calls)")
    t0 = time.time()
    example = torch.randn(d.batch_size, 3, config.model.img_size, config.model.img_size,
                          generator=torch.Generator().manual_seed(0))
    lat = measure_latency(predictors, example, warmup=d.warmup, repeats=d.repeats, rounds=args.rounds,
                          threads=THREADS)
    # the same base is timed several times (hand, each arm): per runtime the median of its copies, so the
    # reference is not the luckiest copy; the faster runtime's is the reference
    copies: dict[str, list[float]] = {}
    for key in bases:
        copies.setdefault(entries[key]["runtime"], []).append(lat[key].median_ms)
    pooled = {rt: statistics.median(v) for rt, v in copies.items()}
    reference = min(pooled, key=pooled.get)
    for key, e in entries.items():
        l = lat[key]
        e.update(latency_ms=round(l.median_ms, 4), p10_ms=round(l.p10_ms, 4), p90_ms=round(l.p90_ms, 4),
                 cv=round(l.cv, 4), round_medians_ms=[round(x, 4) for x in l.round_medians_ms],
                 latency_vs_base=round(l.median_ms / pooled[reference], 4))
    hand_key = "hand:hand_pipeline"
    if hand_key in lat:  # paired by round: both timed within the same seconds, so drift cancels
        for key, e in entries.items():
            mid, p25, p75 = paired_ratio(lat[key], lat[hand_key])
            e.update(vs_hand=round(mid, 4), vs_hand_p25=round(p25, 4), vs_hand_p75=round(p75, 4))
    result = {"what": "issue 18: hand rows, arm bases and feasible records timed in one interleaved run",
              "date": dt.datetime.now().isoformat(timespec="seconds"), "command": command_line(),
              "machine": machine(), "reference": reference, "reference_ms": round(pooled[reference], 4),
              "base_copies_ms": {rt: [round(x, 4) for x in v] for rt, v in copies.items()},
              "wall_s": round(time.time() - t0, 1),
              "settings": {"warmup": d.warmup, "repeats": d.repeats, "rounds": args.rounds, "threads": THREADS,
                           "batch": d.batch_size, "input": "fixed random tensor (seed 0)", "interleaved": True},
              "rows": entries, "not_timed": skipped}
    write_json(out / "retime.json", result)
    print(f"reference: the {reference} base, median of {len(copies[reference])} copies ({pooled[reference]:.3f} ms)")
    for key, e in entries.items():
        was = e.get("in_run_ratio")
        print(f"  {key:<32} {e['latency_ms']:.3f} ms  {e['latency_vs_base']:.3f}x the base"
              + (f"  {e['vs_hand']:.3f}x hand [{e['vs_hand_p25']:.3f}, {e['vs_hand_p75']:.3f}]" if "vs_hand" in e else "")
              + (f"  (in its run: {was:.3f}x the base)" if was is not None else ""))
    for key, why in skipped.items():
        print(f"  {key:<32} not timed: {why}")
    print(f"wrote {out / 'retime.json'} ({result['wall_s']:.0f} s)")
    return 0


# -- report ----------------------------------------------------------------------------------------

def _finish(r: dict) -> float:
    return r.get("finished") or (r["started"] + (r.get("duration_s") or 0.0))


def _describe(choices: dict) -> str:
    parts = []
    for stage in ("prune", "distill", "quantize"):
        name, params = (choices.get(stage) or ["none", {}])[:2]
        if name != "none":
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
                              if k not in ("importance", "round_to"))
            parts.append(f"{name}({shown})" if shown else name)
    runtime = (choices.get("runtime") or [None])[0]
    return (" + ".join(parts) or "no compression") + (f" @{runtime}" if runtime else "")


def load_arm(folder: Path) -> dict[str, Any] | None:
    """An arm's figures from ``arm.json`` and its run folder; ``None`` when it has no run yet."""
    info = json.loads((folder / "arm.json").read_text()) if (folder / "arm.json").is_file() else {}
    run = Path(info.get("run_dir") or folder / "run")
    if not (run / "base.json").is_file():
        return None
    from autocompress.store.run_folder import RunFolder

    base = json.loads((run / "base.json").read_text())
    records = [r for r in RunFolder(run).trials() if r.get("number", -1) >= 0]
    pareto = json.loads((run / "pareto.json").read_text()) if (run / "pareto.json").is_file() else {"front": []}
    mach = json.loads((run / "machine.json").read_text()) if (run / "machine.json").is_file() else {}
    data = json.loads((run / "data.json").read_text()) if (run / "data.json").is_file() else {}
    # the run's start: the search's clock starts just before the base is measured (after the data is loaded,
    # which the search command's start in arm.json also counts)
    if base.get("started"):
        t0, t0_from = base["started"], "the base measurement's start (base.json), where the search's clock starts"
    elif info.get("started"):
        t0, t0_from = info["started"], "the search command's start (arm.json)"
    else:
        t0, t0_from = min((r["started"] for r in records), default=time.time()), "the earliest record's start"
    bm = base["metrics"]
    by_rt = {rt: m["latency_ms"] for rt, m in (base.get("by_runtime") or {}).items()}

    def ratio_fastest(r: dict) -> float | None:
        """The record's latency over the fastest fp32 base (its own ratio is to the base on its runtime)."""
        ratio = (r.get("metrics") or {}).get("latency_vs_base_pooled") or r.get("latency_vs_base")
        if ratio is None:
            return None
        if r.get("base_runtime"):  # timed beside the run's reference base already (autocompress after d32a52e)
            return ratio
        runtime = (r.get("metrics") or {}).get("runtime") or bm["runtime"]
        return ratio * by_rt.get(runtime, bm["latency_ms"]) / bm["latency_ms"]

    for r in records:
        r["_t"] = _finish(r) - t0
        r["_ratio"] = ratio_fastest(r)
    ends = [info.get("finished")] + [_finish(r) for r in records]
    return {"name": folder.name, "folder": folder, "run": run, "info": info, "base": base, "records": records,
            "pareto": pareto, "machine": mach, "data": data, "t0": t0, "t0_from": t0_from,
            "wall_s": info.get("wall_s") or (max(e for e in ends if e) - t0 if records else 0.0),
            "control": bool(info.get("control"))}


def _apply_retime(out: Path, hand_data: dict | None, arms: list[dict]) -> dict | None:
    """Puts OUT/retime.json's ratios on the hand rows and the arms' records (``_ratio``); ``None`` without it.

    A retime older than an arm's last record is stale and is not used (a line says so)."""
    path = out / "retime.json"
    if not path.is_file():
        return None
    retimed = json.loads(path.read_text())
    when = dt.datetime.fromisoformat(retimed["date"]).timestamp()
    stale = [a["name"] for a in arms if a["records"] and max(_finish(r) for r in a["records"]) > when]
    if stale:
        print(f"{path}: older than the last record of {', '.join(stale)}: not used; run `retime` again")
        return None
    rows = retimed["rows"]
    if hand_data:
        for key, row in hand_data["rows"].items():
            e = rows.get(f"hand:{key}")
            if e:
                row.update(latency_in_hand_run=row["latency_vs_base"], latency_ms=e["latency_ms"],
                           latency_vs_base=e["latency_vs_base"])
    for a in arms:
        for r in a["records"]:
            e = rows.get(f"{a['name']}:{r['number']}")
            if e:
                r["_in_run_ratio"], r["_ratio"], r["_retimed"] = r["_ratio"], e["latency_vs_base"], True
                r["_vs_hand"] = e.get("vs_hand")
    return retimed


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def arm_times(a: dict, hand_row: dict | None) -> dict[str, Any]:
    """Time to the first feasible record, to hand parity and to the arm's best, from the run start."""
    base_test = a["base"]["metrics"].get("test_accuracy")
    feasible = [r for r in a["records"] if r.get("state") == "complete" and r.get("feasible")]

    def small_and_fast(r: dict) -> bool:
        """At most hand's size, and as fast: paired with hand round by round where retimed together."""
        if hand_row is None or (r.get("metrics") or {}).get("size_mb", float("inf")) > hand_row["size_mb"]:
            return False
        if r.get("_vs_hand") is not None:
            return r["_vs_hand"] <= 1.0
        return r["_ratio"] is not None and r["_ratio"] <= hand_row["latency_vs_base"]

    def parity(r: dict) -> bool:
        m = r.get("metrics") or {}
        return (base_test is not None and m.get("test_accuracy") is not None and small_and_fast(r)
                and m["test_accuracy"] >= base_test - WITHIN_PP)

    first = min(feasible, key=lambda r: r["_t"], default=None)
    at_parity = sorted((r for r in feasible if parity(r)), key=lambda r: r["_t"])
    pool = [r for r in feasible if small_and_fast(r)] or feasible
    # the most accurate on validation (what the search sees; the test half stays held out), earliest on ties
    best = max(pool, key=lambda r: ((r["metrics"].get("accuracy") or 0.0), -r["_t"]), default=None)
    front = {row["number"] for row in a["pareto"].get("front", [])}
    front_parity = [r for r in at_parity if r["number"] in front]

    from autocompress.objectives import dominates

    def point(r: dict) -> list[float]:
        """Validation top-1, latency ratio and size: the search's default objectives, in their order."""
        return [r["metrics"].get("accuracy") or 0.0, r["_ratio"] if r["_ratio"] is not None else float("inf"),
                r["metrics"]["size_mb"]]

    # on the front when it finished: what a user watching the front had then, whatever came later
    reached = [r for r in at_parity
               if not any(q is not r and q["_t"] <= r["_t"] and dominates(point(q), point(r)) for q in feasible)]
    return {"feasible": feasible, "first": first, "parity": at_parity[0] if at_parity else None,
            "best": best, "best_as_small_and_fast": bool(best is not None and pool is not feasible),
            "front_parity": front_parity, "reached": reached, "parity_fn": parity}


def report(args: argparse.Namespace) -> int:
    """Reads hand.json and the arms' run folders; writes and prints the night's table and the target check."""
    out: Path = args.out
    md_path = args.md or out.parent / f"{out.name}.md"
    hand_data = json.loads((out / "hand.json").read_text()) if (out / "hand.json").is_file() else None
    arms = [a for a in (load_arm(f) for f in sorted(out.iterdir()) if f.is_dir() and (f / "arm.json").is_file()) if a]
    arms.sort(key=lambda a: a["control"])  # search arms first
    if hand_data is None and not arms:
        print(f"nothing to report in {out}: run `hand` and `arm` first")
        return 1
    retimed = _apply_retime(out, hand_data, arms) if not getattr(args, "no_retime", False) else None
    hand_row = hand_data["rows"][hand_data["hand"]] if hand_data else None
    lines = ["# A real night on real data (issue 18)", ""]
    lines += [f"Written {dt.datetime.now():%Y-%m-%d %H:%M} by `{command_line()}` from `{out}`.", "",
              ("Setting: the shared base `resnet18-cifar10.pth` (timm resnet18, CIFAR-10, 32x32), the shared "
               "CIFAR-10 ImageFolder with `data.val_from: test` (validation = one fixed half of the test images, "
               "test = the other half); budget: drop <= 1 pp (validation), latency <= 0.5x the base, <= 4 MB; "
               f"runtimes ONNX Runtime and OpenVINO, {THREADS} threads, batch 1. Top-1 below is on the test half."),
              ""]
    if hand_data:
        m = hand_data["machine"]
        s = hand_data["settings"]["fine_tune"]
        d = hand_data["data"]
        lines += [f"**Hand rows**: `{out / 'hand.json'}`, {hand_data['date']}, `{hand_data['command']}`; machine "
                  f"{m.get('cpu')} ({', '.join(m.get('int8_flags', []))}), {m.get('cpu_count')} CPUs, load "
                  f"{m.get('load_average')}; data {d['train']} train / {d['val']} val / {d['test']} test images. "
                  f"Fine-tune: {s['epochs']} epochs, AdamW peak lr {s['lr']:g}, {s['loss']}, on {s['device']}. "
                  f"All hand rows timed in one interleaved run; ratios to the faster fp32 base "
                  f"({hand_data['rows'][hand_data['reference']]['name']}). Wall s: "
                  + ", ".join(f"{k} {v:g}" for k, v in hand_data["wall_s"].items()) + ".", ""]
    if retimed:
        lines += [f"**Latency retimed together**: `{out / 'retime.json'}`, {retimed['date']}, `{retimed['command']}`: "
                  f"the hand rows, each arm's base and {sum(1 for k in retimed['rows'] if k.count(':') == 1 and not k.startswith('hand:'))} "
                  f"feasible records in one interleaved run ({retimed['settings']['rounds']} rounds x "
                  f"{retimed['settings']['repeats']} calls, batch 1, {retimed['settings']['threads']} threads; "
                  f"{retimed['wall_s']:g} s); reference: the fp32 base on {retimed['reference']}, the median of its "
                  f"{len(retimed['base_copies_ms'][retimed['reference']])} copies (hand, each arm: "
                  f"{', '.join(f'{x:.3f}' for x in retimed['base_copies_ms'][retimed['reference']])} ms). "
                  "Every latency ratio below, and "
                  "hand parity, use these figures; a record not retimed keeps its in-run ratio (marked)."
                  + (f" Not retimed: {', '.join(f'{k} ({v})' for k, v in retimed['not_timed'].items())}."
                     if retimed["not_timed"] else ""), ""]
    lines += ["| row | where | test top-1 % | vs base pp | latency ms | latency vs base | size MB | size vs base | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    if hand_data:
        base_test = hand_data["rows"][hand_data["reference"]]["test_top1"]
        for key in ("base_onnxruntime", "base_openvino", "hand_pipeline", "nncf_alone", "pruned_fp32"):
            r = hand_data["rows"].get(key)
            if r:
                was = (f"; in the hand run {r['latency_in_hand_run']:.3f}x" if "latency_in_hand_run" in r else "")
                lines.append(f"| {r['name']} | hand.json | {r['test_top1']:.2f} | {r['test_top1'] - base_test:+.2f} | "
                             f"{r['latency_ms']:.3f} | {r['latency_vs_base']:.3f}x | {r['size_mb']:.2f} | "
                             f"{r['size_vs_base']:.3f}x | val {r['val_top1']:.2f} %{was} |")
    times = {}
    for a in arms:
        bm = a["base"]["metrics"]
        times[a["name"]] = arm_times(a, hand_row)
        lines.append(f"| base, {a['name']} arm ({bm['runtime']}, the run's reference) | `{a['run']}` | "
                     f"{bm.get('test_accuracy') or float('nan'):.2f} | +0.00 | {bm['latency_ms']:.3f} | 1.000x | "
                     f"{bm['size_mb']:.2f} | 1.000x | val {bm.get('accuracy') or float('nan'):.2f} % |")
        records = {r["number"]: r for r in a["records"]}
        for row in a["pareto"].get("front", []):
            r = records.get(row["number"], {**row, "_t": None, "_ratio": None})
            m = row["metrics"]
            test = m.get("test_accuracy")
            ratio = r.get("_ratio")
            lines.append(
                f"| {a['name']} front: trial {row['number']}, {_describe(row['choices'])} | `{a['run']}` | "
                f"{test if test is not None else float('nan'):.2f} | "
                f"{(test - bm['test_accuracy']) if test is not None and bm.get('test_accuracy') is not None else float('nan'):+.2f} | "
                f"{m['latency_ms']:.3f} | {ratio if ratio is not None else float('nan'):.3f}x | {m['size_mb']:.2f} | "
                f"{m['size_mb'] / bm['size_mb']:.3f}x | {'parity with hand; ' if r.get('_t') is not None and times[a['name']]['parity_fn'](r) else ''}"
                f"{'not retimed; ' if retimed and not r.get('_retimed') else ''}"
                f"{'' if r.get('_vs_hand') is None else format(r['_vs_hand'], '.3f') + 'x hand (retimed); '}"
                f"val {m.get('accuracy') or float('nan'):.2f} %, {row.get('latency_vs_base') or float('nan'):.3f}x "
                f"the base timed beside it ({r.get('base_runtime') or 'its own runtime'}), at {_hms(r.get('_t'))} |")
    lines += ["", ("Latency vs base: every row retimed together (above): over the median of the fp32 base's copies "
                   "on the faster runtime; a front row's note keeps the ratio the search recorded beside its own base."
                   if retimed else
                   "Latency vs base: hand rows, ratio to the faster fp32 base in the same interleaved run; front rows, "
                   "the trial's ratio to the base timed beside it (`latency_vs_base`, in the note): the run's reference "
                   "(fastest) base; records from before that was so are rescaled by the two bases' latencies in "
                   "`base.json`."), ""]

    if retimed:
        lines += _retimed_rows(arms, retimed, times)
    lines += ["## Times (h:mm:ss from the run's start)", "",
              ("| arm | run folder | machine | wall | records: measured / stopped early / failed / interrupted | feasible | "
               "first feasible | hand parity | best | best: trial, test top-1 %, latency vs base, MB |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        t = times[a["name"]]
        rs = a["records"]
        counts = (sum(r["state"] == "complete" and not r.get("stopped") for r in rs), sum(bool(r.get("stopped")) for r in rs),
                  sum(r["state"] == "fail" and not r.get("interrupted") for r in rs), sum(bool(r.get("interrupted")) for r in rs))
        b = t["best"]
        best = (f"{b['number']} ({_describe(b['choices'])}), {b['metrics'].get('test_accuracy') or float('nan'):.2f}, "
                f"{b['_ratio'] or float('nan'):.3f}x, {b['metrics']['size_mb']:.2f}"
                + ("" if t["best_as_small_and_fast"] else "; none as small and fast as hand: most accurate feasible")
                if b else "none")
        mach = a["machine"]
        ladder = a["info"].get("rungs")
        ladder = f" (rungs {ladder})" if ladder and not a["control"] else ""
        lines.append(f"| {a['name']}{' (control)' if a['control'] else ''}{ladder} | `{a['run']}` | {mach.get('cpu')} | "
                     f"{_hms(a['wall_s'])} | {' / '.join(map(str, counts))} | {len(t['feasible'])} | "
                     f"{_hms(t['first']['_t'] if t['first'] else None)} | "
                     f"{_hms(t['parity']['_t'] if t['parity'] else None)} | {_hms(b['_t'] if b else None)} | {best} |")
    lines += ["", ("Start: " + "; ".join(f"{a['name']}: {a['t0_from']}" for a in arms) + ". A record's time is "
                   "when it finished (`finished`, else `started` + `duration_s`). Hand parity: the first feasible "
                   "record at least as small and as fast as the hand pipeline with test top-1 within 1 pp of the "
                   "run's base. Best: the most accurate (validation) feasible record at least as small and fast as "
                   "hand, else the most accurate feasible one."), ""]

    lines += lineage_rows(arms)
    notes = _data_notes(hand_data, arms)
    lines += ["## Target", ""] + target(arms, times, hand_row) + ([""] + notes if notes else [])
    text = "\n".join(lines) + "\n"
    print(text)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    print(f"wrote {md_path}")
    return 0


def _retimed_rows(arms: list[dict], retimed: dict, times: dict) -> list[str]:
    """Every feasible record of every arm with its retimed latency, by arm and finishing time."""
    lines = ["## Feasible records, retimed together", "",
             "| arm | trial | at | configuration | test top-1 % | MB | ms | vs base | vs hand: median [p25, p75] of "
             "paired rounds | vs base in its own run | on the final front | parity |",
             "|---|---:|---|---|---:|---:|---:|---:|---|---:|---|---|"]
    for a in arms:
        front = {row["number"] for row in a["pareto"].get("front", [])}
        for r in sorted(times[a["name"]]["feasible"], key=lambda r: r["_t"]):
            e = retimed["rows"].get(f"{a['name']}:{r['number']}")
            m = r["metrics"]
            lines.append(
                f"| {a['name']} | {r['number']} | {_hms(r['_t'])} | {_describe(r['choices'])} | "
                f"{m.get('test_accuracy') or float('nan'):.2f} | {m['size_mb']:.2f} | "
                + (f"{e['latency_ms']:.3f} | {e['latency_vs_base']:.3f}x | "
                   + (f"{e['vs_hand']:.3f}x [{e['vs_hand_p25']:.3f}, {e['vs_hand_p75']:.3f}]" if "vs_hand" in e else "n/a")
                   if e else "not retimed | | ")
                + f" | {(r.get('_in_run_ratio') or r['_ratio'] or float('nan')):.3f}x | "
                f"{'yes' if r['number'] in front else 'no'} | {'yes' if times[a['name']]['parity_fn'](r) else 'no'} |")
    lines += ["", ("vs hand: the record's round median over the hand pipeline's in the same round, the median over "
                   "rounds (both timed within the same seconds, so the machine's drift cancels); parity takes "
                   "\"as fast as hand\" from it. vs base: over the median of the fp32 base's copies."), ""]
    return lines


def _structure(r: dict) -> tuple:
    name, params = (r["choices"].get("prune") or ["none", {}])[:2]
    return name, tuple(sorted((k, v) for k, v in params.items()))


def _epochs(r: dict) -> float | None:
    name, params = (r["choices"].get("distill") or ["none", {}])[:2]
    return params.get("epochs") if name != "none" else None


def lineage_rows(arms: list[dict]) -> list[str]:
    """When lineage pays: each trial that started from a parent's fine-tuned model beside the best trial of
    the same pruning and fine-tune length that started from the base (either arm), validation top-1."""
    children = [(a, r) for a in arms for r in a["records"] if (r.get("lineage") or {}).get("used")
                and r.get("state") in ("complete", "pruned")]
    if not children:
        return []
    direct: dict[tuple, list] = {}
    for a in arms:
        for r in a["records"]:
            if r.get("state") == "complete" and not (r.get("lineage") or {}).get("used") and r.get("metrics") \
                    and r["metrics"].get("accuracy") is not None and not r.get("stopped"):
                direct.setdefault((_structure(r), _epochs(r)), []).append((a["name"], r))
    lines = ["## Lineage: a trial started from a less pruned trial's fine-tuned model", "",
             "| arm | trial | from trial | parent: pruning, epochs, val % | trial: pruning, epochs, val % | "
             "best from the base, same pruning and epochs (arm: trial, val %) | difference pp |",
             "|---|---|---|---|---|---|---:|"]
    for a, r in sorted(children, key=lambda ar: ar[1]["number"]):
        parent = next((p for p in a["records"] if p["number"] == r["lineage"]["parent"]), None)
        mine = (r.get("metrics") or {}).get("accuracy")
        if mine is None:
            mine = r.get("whole_val_after_training")
        peers = direct.get((_structure(r), _epochs(r)), [])
        best = max(peers, key=lambda ar: ar[1]["metrics"]["accuracy"], default=None)

        def desc(x: dict | None, acc: float | None) -> str:
            if x is None:
                return "?"
            ratio = dict(_structure(x)[1]).get("ratio")
            return f"{ratio:g}, {_epochs(x):g}, {acc if acc is not None else float('nan'):.2f}"

        lines.append(
            f"| {a['name']} | {r['number']} | {r['lineage']['parent']} | "
            f"{desc(parent, (parent.get('metrics') or {}).get('accuracy') if parent else None)} | {desc(r, mine)}"
            f"{' (stopped)' if r.get('stopped') else ''} | "
            + (f"{best[0]}: {best[1]['number']}, {best[1]['metrics']['accuracy']:.2f}" if best else "none ran") + " | "
            + (f"{mine - best[1]['metrics']['accuracy']:+.2f}" if best and mine is not None else "n/a") + " |")
    lines += ["", ("Validation top-1 (what the search judges; the test half stays held out). A positive difference: "
                   "starting from the parent's model paid at that length."), ""]
    return lines


def _data_notes(hand_data: dict | None, arms: list[dict]) -> list[str]:
    """Warnings where the hand rows and the arms did not see the same split sizes."""
    sizes = {}
    if hand_data:
        sizes["hand"] = tuple(hand_data["data"][k] for k in ("train", "val", "test"))
    for a in arms:
        if a["data"]:
            sizes[a["name"]] = tuple(a["data"].get(k) for k in ("train", "val", "test"))
    if len(set(sizes.values())) > 1:
        return ["**Warning:** the parts saw different data (train / val / test images): "
                + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in sizes.items()) + "; their figures do not compare."]
    return []


def target(arms: list[dict], times: dict, hand_row: dict | None) -> list[str]:
    """The target check in words: met, missed, or why it cannot be judged."""
    search = [a for a in arms if not a["control"]]
    control = [a for a in arms if a["control"]]
    goal = ("Target: inside the time, a feasible search-arm front model at least as small and as fast as the hand "
            "pipeline, within 1 pp of the base (test), reached at least 2x sooner than the control arm reaches its best.")
    if hand_row is None or not search or not control:
        missing = [w for w, ok in (("hand.json", hand_row is not None), ("a search arm", bool(search)),
                                   ("a control arm", bool(control))) if not ok]
        return [goal, "", f"**Not judged**: missing {', '.join(missing)}."]
    s = next((a for a in search if a["name"] == "search"), search[0])
    c = next((a for a in control if a["name"] == "control"), control[0])
    limit = float(s["info"].get("hours") or 0) * 3600 or None
    found = [r for r in times[s["name"]]["front_parity"] if limit is None or r["_t"] <= limit]
    reached = [r for r in times[s["name"]]["reached"] if limit is None or r["_t"] <= limit]
    lines = [goal, "",
             (f"Hand pipeline: {hand_row['size_mb']:.2f} MB, {hand_row['latency_vs_base']:.3f}x the base, test "
              f"{hand_row['test_top1']:.2f} %. Search arm `{s['run']}`, control arm `{c['run']}`."),
             ("When the search reached parity: the first parity record that was on the front when it finished "
              "(non-dominated on validation top-1, latency and size by every feasible record finished by then). "
              "The stricter reading, the first parity record still on the final front, is given beside it.")]
    if not found:
        lines.append(f"**Target missed**: the search arm's front holds no feasible model as small and fast as hand within "
                     f"1 pp inside its {_hms(limit)}.")
        return lines
    strict = min(found, key=lambda r: r["_t"])
    first = min(reached, key=lambda r: r["_t"]) if reached else strict
    cb = times[c["name"]]["best"]
    if cb is not None:
        t_c, what = cb["_t"], (f"its best, trial {cb['number']} ({_describe(cb['choices'])}), at {_hms(cb['_t'])}"
                               + ("" if times[c["name"]]["best_as_small_and_fast"] else
                                  " (no model as small and fast as hand: its most accurate feasible)"))
    else:
        t_c, what = c["wall_s"], f"no feasible model in its whole {_hms(c['wall_s'])} (judged against that)"
    speedup = t_c / first["_t"] if first["_t"] > 0 else float("inf")
    strict_speedup = t_c / strict["_t"] if strict["_t"] > 0 else float("inf")
    met = speedup >= 2.0
    lines.append(f"Search arm: trial {first['number']} ({_describe(first['choices'])}), test "
                 f"{first['metrics']['test_accuracy']:.2f} % ({first['metrics']['test_accuracy'] - s['base']['metrics']['test_accuracy']:+.2f} pp), "
                 f"{first['_ratio']:.3f}x the base, {first['metrics']['size_mb']:.2f} MB, at {_hms(first['_t'])}. "
                 f"Control arm: {what}.")
    lines.append(f"**Target {'met' if met else 'missed'}**: {speedup:.2f}x sooner (target >= 2x); on the final front: "
                 f"trial {strict['number']} at {_hms(strict['_t'])}, {strict_speedup:.2f}x.")
    return lines


# -- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, samples: bool = True) -> None:
        p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default benchmarks/results/night)")
        if samples:
            p.add_argument("--max-samples", type=int, default=None, help="images per split (data.max_samples; smoke runs)")

    def hand_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=float, default=5.0, help="fine-tuning epochs of the hand pipeline (default 5)")
        p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate of that fine-tune (default 1e-3)")

    p = sub.add_parser("hand", help="the hand pipeline, NNCF int8 alone and the base")
    common(p)
    hand_options(p)
    p = sub.add_parser("arm", help="one search arm: write its config and space, run autocompress search")
    p.add_argument("name")
    common(p)
    p.add_argument("--hours", type=float, default=2.0, help="wall time of the search (default 2)")
    p.add_argument("--control", action="store_true", help="the control arm: search.rungs null, epochs searched")
    p.add_argument("--rungs", type=float, nargs="+", default=None,
                   help="the search arm's ladder, e.g. --rungs 1 2 4 8 (default 1 3 9, the schema's default)")
    p.add_argument("--seed", type=int, default=0,
                   help="search.seed of the arm (default 0); the data split stays seed 0 in every arm")
    p.add_argument("--no-first-structures", action="store_true",
                   help="also write search.first_structures: false (where the schema has it)")
    p = sub.add_parser("matched", help="an arm fixed to one trial's configuration, lineage off")
    p.add_argument("name")
    common(p)
    p.add_argument("--trial", type=int, required=True, help="the trial whose configuration the arm repeats")
    p.add_argument("--arm", default="search", help="the arm that trial belongs to (default search)")
    p.add_argument("--hours", type=float, default=0.2, help="wall time (default 0.2)")
    p = sub.add_parser("retime", help="hand rows, arm bases and feasible records timed in one interleaved run")
    common(p, samples=False)
    p.add_argument("--rounds", type=int, default=80, help="interleaved rounds (default 80)")
    p = sub.add_parser("report", help="the table and the target check")
    common(p, samples=False)
    p.add_argument("--no-retime", action="store_true", help="ignore OUT/retime.json: each part's own timing")
    p.add_argument("--md", type=Path, default=None, help="markdown file (default OUT.md: benchmarks/results/night.md)")
    p = sub.add_parser("all", help="hand, arm search, arm control --control, report")
    common(p)
    hand_options(p)
    p.add_argument("--hours", type=float, default=2.0, help="wall time of each arm (default 2)")
    args = parser.parse_args(argv)

    problem = missing_shared()
    if problem:
        print(problem)
        return 0
    args.out = args.out.resolve()
    from autocompress.errors import UserError

    try:
        if args.command == "hand":
            return hand(args)
        if args.command == "arm":
            return arm(args)
        if args.command == "retime":
            return retime(args)
        if args.command == "report":
            return report(args)
        if args.command == "matched":
            return matched(args)
        started = time.time()
        rc = hand(args)
        for name, control in (("search", False), ("control", True)):
            rc |= arm(argparse.Namespace(**{**vars(args), "name": name, "control": control,
                                            "no_first_structures": False}))
        rc |= retime(argparse.Namespace(out=args.out, rounds=80))
        rc |= report(argparse.Namespace(out=args.out, md=None, no_retime=False))
        print(f"all: {time.time() - started:.0f} s")
        return rc
    except UserError as err:  # e.g. OpenVINO not installed: one line, as the CLI says it
        print(f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
