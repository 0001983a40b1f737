"""Benchmark of the compression plugins on the shared CIFAR-10 ResNet-18.

Each pipeline is a list of ``(plugin name, params)`` applied in order (prune -> distill ->
quantize) to a copy of the shared fp32 base, exactly as a trial would. For each it reports:

* top-1 on the CIFAR-10 test images (through the saved artefact, as deployed),
* batch-1 latency on ONNX Runtime and in torch eager, each timed in interleaved rounds with
  the fp32 base in the same window (``autocompress.measure.accuracy.measure_latency``), and the ratio,
* size on disk of the ONNX Runtime artefact (the ``.pt2`` size for torch too),
* parameters, and non-zero parameters (unstructured pruning keeps shapes, zeroes values).

The table goes to ``benchmarks/results/plugins_cifar10.md``. Fine-tunes use a subset of the
train images; size the run with the flags. Full-size settings (the defaults) take long on a
2-core machine; prove the script with e.g. ``--train-samples 500 --test-samples 500``.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/plugins_cifar10.py --train-samples 5000 --test-samples 2000
    HF_HUB_OFFLINE=1 python benchmarks/plugins_cifar10.py --only channel_prune --only base

To add a method, append a ``(label, [(plugin, params), ...])`` entry to :data:`PIPELINES`.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from autocompress.config.schema import DataConfig, ModelConfig  # noqa: E402
from autocompress.data import DataBundle, load_data  # noqa: E402
from autocompress.measure.accuracy import count_params, measure_latency, module_predictor, top1  # noqa: E402
from autocompress.models import create_model, load_checkpoint  # noqa: E402
from autocompress.plugin.contract import Artefact, TrialContext  # noqa: E402
from autocompress.plugin.registry import discover  # noqa: E402
from autocompress.measure.runtimes import get_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results" / "plugins_cifar10.md"

Pipeline = tuple[str, list[tuple[str, dict[str, Any]]]]

#: Every benchmarked pipeline: (label, [(plugin name, params), ...]) with default settings.
#: ``--epochs`` overrides the ``epochs`` of every plugin that has that parameter.
PIPELINES: list[Pipeline] = [
    ("fp32 base", []),
    # -- pruning --------------------------------------------------------------------------
    ("channel_prune r=0.3 (no fine-tune)", [("channel_prune", {"ratio": 0.3})]),
    ("channel_prune r=0.3 -> logit_kd", [("channel_prune", {"ratio": 0.3}), ("logit_kd", {})]),
    ("channel_prune r=0.5 -> logit_kd", [("channel_prune", {"ratio": 0.5}), ("logit_kd", {})]),
    ("channel_prune r=0.5 taylor -> logit_kd", [("channel_prune", {"ratio": 0.5, "importance": "taylor"}), ("logit_kd", {})]),
    ("soft_filter_prune r=0.3 (KD inside)", [("soft_filter_prune", {"ratio": 0.3})]),
    ("soft_filter_prune r=0.5 (KD inside)", [("soft_filter_prune", {"ratio": 0.5})]),
    ("unstructured_prune s=0.8 (no fine-tune)", [("unstructured_prune", {"sparsity": 0.8})]),
    ("unstructured_prune s=0.9 -> logit_kd", [("unstructured_prune", {"sparsity": 0.9}), ("logit_kd", {})]),
    # -- distillation / quantization ------------------------------------------------------
    ("logit_kd", [("logit_kd", {})]),
    ("int8_static", [("int8_static", {})]),
    ("int8_static percentile", [("int8_static", {"calibration": "percentile"})]),
    ("int8_static entropy", [("int8_static", {"calibration": "entropy"})]),
    ("int8_dynamic (MatMul + Conv)", [("int8_dynamic", {})]),
    ("int8_mixed stage0 + stage4 float", [("int8_mixed", {"stage0": "float", "stage4": "float"})]),
    ("int8_qat (KD from base)", [("int8_qat", {})]),
    ("logit_kd + feature KD (stage -2)", [("logit_kd", {"feature_weight": 1.0, "feature_stage": -2})]),
    ("student_kd mobilenetv3_small_100 (10 ep)", [("student_kd", {"student": "mobilenetv3_small_100", "epochs": 10})]),
    ("student_kd resnet10t (10 ep)", [("student_kd", {"student": "resnet10t", "epochs": 10})]),
    # -- chains ---------------------------------------------------------------------------
    ("channel_prune r=0.5 -> logit_kd -> int8_static",
     [("channel_prune", {"ratio": 0.5}), ("logit_kd", {}), ("int8_static", {})]),
    ("channel_prune r=0.5 -> logit_kd + feature KD -> int8_qat",
     [("channel_prune", {"ratio": 0.5}), ("logit_kd", {"feature_weight": 1.0, "feature_stage": -2}), ("int8_qat", {})]),
    ("student_kd mobilenetv3_small_100 (10 ep) -> int8_static",
     [("student_kd", {"student": "mobilenetv3_small_100", "epochs": 10}), ("int8_static", {})]),
]


@dataclass
class Setup:
    """What every pipeline shares: the base, the data and the measuring settings."""

    base: torch.nn.Module
    data: DataBundle
    args: argparse.Namespace
    registry: Any
    base_onnx: Artefact
    workdir: Path
    base_ort: Any = None
    notes: list[str] = field(default_factory=list)


def load_base(shared: Path) -> tuple[torch.nn.Module, dict]:
    """The shared fp32 ResNet-18 for CIFAR-10 and its JSON card."""
    card = json.loads((shared / "models" / "resnet18-cifar10.json").read_text())
    model = create_model(ModelConfig(name=card["arch"], img_size=card["img_size"], train_epochs=0), card["num_classes"])
    load_checkpoint(model, shared / "models" / "resnet18-cifar10.pth")
    return model.eval(), card


def load_cifar(shared: Path, card: dict, train_samples: int, test_samples: int, batch_size: int) -> DataBundle:
    """CIFAR-10 with ``train_samples`` train images (a 20% share of them is validation) and
    ``test_samples`` test images, normalised with the base's mean/std."""
    root = shared / "datasets" / "cifar10"
    common = dict(source="imagefolder", path=root, batch_size=batch_size, mean=tuple(card["mean"]), std=tuple(card["std"]))
    train = load_data(DataConfig(max_samples=train_samples, **common), card["img_size"])
    test = train if test_samples == train_samples else load_data(DataConfig(max_samples=test_samples, **common), card["img_size"])
    return DataBundle(train.train, train.val, test.test, train.num_classes, train.classes, train.img_size,
                      [*train.notes, f"{len(train.train)} train / {len(train.val)} val / {len(test.test)} test images"])


def with_overrides(params: dict[str, Any], cls, args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline params plus the CLI's overrides (``--epochs``) where the plugin has the field."""
    params = dict(params)
    if args.epochs is not None and "epochs" in cls.Config.model_fields and "epochs" not in params:
        params["epochs"] = args.epochs
    return params


def apply_pipeline(steps: list[tuple[str, dict]], setup: Setup, workdir: Path) -> tuple[torch.nn.Module, torch.nn.Module | Artefact]:
    """Applies the steps to a copy of the base; returns (last float module, final result)."""
    args = setup.args
    model = copy.deepcopy(setup.base)
    ctx = TrialContext(
        data=setup.data, teacher=copy.deepcopy(setup.base).eval(), device=torch.device("cpu"), runtime="onnxruntime",
        example_input=setup.data.train.example(1), workdir=workdir, seed=args.seed, batch_size=args.batch_size,
        threads=args.threads, log=lambda line: print("   ", line, flush=True),
    )
    result: torch.nn.Module | Artefact = model
    module = model
    for name, params in steps:
        if isinstance(result, Artefact):
            raise RuntimeError(f"{name} cannot follow a stage that produced an artefact")
        cls = setup.registry.get(name)
        torch.manual_seed(args.seed)
        result = cls.from_params(with_overrides(params, cls, args)).apply(result, ctx)
        if isinstance(result, torch.nn.Module):
            module = result = result.cpu().eval()
    return module, result


def measure(label: str, steps: list[tuple[str, dict]], setup: Setup) -> dict[str, Any]:
    """One row of the table: applies a pipeline and measures accuracy, latency, size, params."""
    args = setup.args
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(dir=setup.workdir))
    module, result = apply_pipeline(steps, setup, work)
    apply_s = time.perf_counter() - t0
    ort = get_runtime("onnxruntime")
    artefact = result if isinstance(result, Artefact) else ort.save(result, setup.data.train.example(1), work / "model.onnx")
    predict = ort.load(artefact, threads=args.threads)
    row: dict[str, Any] = {
        "label": label, "apply_s": round(apply_s, 1), "precision": artefact.precision,
        "top1": top1(predict, setup.data.test, batch_size=args.batch_size),
        "onnx_bytes": artefact.size_bytes(), "params": count_params(module),
        "nonzero_params": sum(int(torch.count_nonzero(p)) for p in module.parameters()),
    }
    example = setup.data.test.example(1)
    lat = measure_latency({"base": setup.base_ort, "candidate": predict}, example, warmup=args.warmup,
                          repeats=args.repeats, rounds=args.rounds, threads=args.threads)
    row["ort_ms"], row["ort_base_ms"] = lat["candidate"].median_ms, lat["base"].median_ms
    if isinstance(result, torch.nn.Module):
        pt2 = get_runtime("torch").save(result, setup.data.train.example(1), work / "model.pt2")
        row["pt2_bytes"] = pt2.size_bytes()
        lat = measure_latency({"base": module_predictor(setup.base), "candidate": module_predictor(result)}, example,
                              warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, threads=args.threads)
        row["eager_ms"], row["eager_base_ms"] = lat["candidate"].median_ms, lat["base"].median_ms
    return row


def markdown(rows: list[dict[str, Any]], setup: Setup, card: dict) -> str:
    """The results table with the settings it was measured under."""
    args = setup.args
    base = next((r for r in rows if r["label"] == "fp32 base" and "error" not in r), None)

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    lines = [
        "# Compression plugins on CIFAR-10 ResNet-18",
        "",
        f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
        f"{args.threads} thread(s).",
        "",
        f"- Base: `resnet18-cifar10.pth` (card: test top-1 {card.get('test_top1')} % on 10,000 images).",
        f"- Data: {setup.data.notes[-1]}; fine-tunes use the train subset; "
        f"epochs override: {args.epochs if args.epochs is not None else 'plugin defaults'}.",
        f"- Latency: batch 1, median of {args.rounds} rounds x {args.repeats} calls, each round interleaved with "
        "the fp32 base in the same window; `vs base` = candidate / base of that window (<1 is faster).",
        "- Size: bytes on disk of the ONNX Runtime artefact (sparse initializers where weights are mostly zero) "
        "and of the torch `.pt2`.",
        "",
        "| pipeline | precision | top-1 % | Δ top-1 | ORT ms | ORT vs base | eager ms | eager vs base "
        "| ONNX MB | ONNX vs base | .pt2 MB | params | non-zero params | apply s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * 12)
            continue
        eager = "eager_ms" in r
        cells = [
            r["label"], r["precision"], f"{r['top1']:.2f}", f"{r['top1'] - base['top1']:+.2f}" if base else "-",
            f"{r['ort_ms']:.2f}", ratio(r["ort_ms"], r["ort_base_ms"]),
            f"{r['eager_ms']:.2f}" if eager else "n/a", ratio(r["eager_ms"], r["eager_base_ms"]) if eager else "n/a",
            f"{r['onnx_bytes'] / 1e6:.2f}", ratio(r["onnx_bytes"], base["onnx_bytes"]) if base else "-",
            f"{r['pt2_bytes'] / 1e6:.2f}" if "pt2_bytes" in r else "n/a",
            f"{r['params'] / 1e6:.3f} M", f"{r['nonzero_params'] / 1e6:.3f} M", f"{r['apply_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes: unstructured pruning cannot speed up dense kernels; its gain is the file size only "
              "(ONNX sparse initializers, int64 indices: smaller only above ~67% zeros per tensor). "
              "Accuracy on a small test subset has a standard error of about "
              f"{100 * (0.25 / max(len(setup.data.test), 1)) ** 0.5:.1f} points.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with models/ and datasets/ (default ../shared)")
    parser.add_argument("--train-samples", type=int, default=5000, help="train images for fine-tuning (20%% of them held out as validation)")
    parser.add_argument("--test-samples", type=int, default=2000, help="test images for top-1")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of every plugin with an 'epochs' parameter (pass -1 for plugin defaults)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT, eager and latency")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=[], help="run the pipelines whose label contains this (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 0:
        args.epochs = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.shared / "models" / "resnet18-cifar10.pth").is_file() or not (args.shared / "datasets" / "cifar10" / "train").is_dir():
        print(f"SKIP: the shared base and CIFAR-10 are not at {args.shared} "
              "(expected models/resnet18-cifar10.pth and datasets/cifar10/{train,test}); nothing measured.")
        return 0
    torch.set_num_threads(args.threads)
    base, card = load_base(args.shared)
    print(f"loading CIFAR-10: {args.train_samples} train, {args.test_samples} test images ...", flush=True)
    data = load_cifar(args.shared, card, args.train_samples, args.test_samples, args.batch_size)
    pipelines = [p for p in PIPELINES if not args.only or any(s in p[0] for s in args.only)]
    if not any(label == "fp32 base" for label, _ in pipelines):
        pipelines.insert(0, PIPELINES[0])  # the reference for the deltas
    with tempfile.TemporaryDirectory(prefix="bench_plugins_") as tmp:
        tmp = Path(tmp)
        ort = get_runtime("onnxruntime")
        base_onnx = ort.save(base, data.train.example(1), tmp / "base.onnx")
        setup = Setup(base, data, args, discover(ROOT / "plugins"), base_onnx, tmp)
        setup.base_ort = ort.load(base_onnx, threads=args.threads)
        rows = []
        for label, steps in pipelines:
            print(f"== {label}", flush=True)
            try:
                row = measure(label, steps, setup)
            except Exception as err:  # one broken pipeline must not lose the others' rows
                traceback.print_exc()
                row = {"label": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"}
            print("   ", {k: v for k, v in row.items() if k != "label"}, flush=True)
            rows.append(row)
        text = markdown(rows, setup, card)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
