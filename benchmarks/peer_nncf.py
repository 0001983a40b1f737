"""Match the best peer (issue 9): fp32 on three runtimes, NNCF int8 on OpenVINO, our ORT int8 variants.

On the shared base ``../shared/models/resnet18-cifar10.pth`` (timm resnet18, CIFAR-10, 32x32),
batch 1, ``--threads`` threads, it measures and writes ``benchmarks/results/peer_nncf.md``:

    fp32        torch eager, ONNX Runtime, OpenVINO
    NNCF int8   plugins/nncf_int8.py (``nncf.quantize``, 512 calibration images) on OpenVINO
    ORT int8    plugins/int8_static.py's ``quantize_onnx_static`` with its options (minmax,
                percentile, entropy, per-channel, first/last float, symmetric/moving-average
                activations), and ``onnxruntime.quantization.quantize_static`` called directly
                with options int8_static does not have yet (per-image calibration, ...)
    pipeline    50 % channel_prune + logit_kd (1 epoch on a train subset) + NNCF int8

Calibration images come from CIFAR-10 train, accuracy from the test images (all 10,000 unless
``--test-samples``). All latencies are measured in one interleaved run
(:func:`autocompress.measure.accuracy.measure_latency`), so they share the machine's state; on a shared
machine they are still noisy.

    python benchmarks/peer_nncf.py                          # full test set
    python benchmarks/peer_nncf.py --test-samples 2000      # 14 min on 2 busy shared cores (fine-tune: 7 of them)
    python benchmarks/peer_nncf.py --test-samples 2000 --no-pipeline   # 8 min there
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BASE_WEIGHTS = SHARED / "models" / "resnet18-cifar10.pth"
CIFAR = SHARED / "datasets" / "cifar10"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

# ORT static int8 variants through int8_static's own quantize_onnx_static (options it has today).
PLUGIN_VARIANTS: dict[str, dict] = {
    "minmax, per-channel (int8_static default)": {},
    "minmax, per-tensor": {"per_channel": False},
    "minmax, first/last float": {"keep_first_last_float": True},
    "minmax, ops=compute": {"ops": "compute"},
    "minmax, moving average (batches of 64)": {"moving_average": True},
    "percentile 99.999": {"calibration": "percentile", "percentile": 99.999},
    "percentile 99.99": {"calibration": "percentile", "percentile": 99.99},
    "entropy": {"calibration": "entropy"},
}
# ORT static int8 through onnxruntime.quantization directly: options int8_static lacks.
# calib_batch: images per calibration run (1 = per-image statistics, as NNCF collects them).
DIRECT_VARIANTS: dict[str, dict] = {
    "minmax, mean of per-image min/max (CalibMovingAverage, calib batch 1)": {
        "calib_batch": 1, "extra": {"CalibMovingAverage": True}},
    "per-image mean + first/last float": {"calib_batch": 1, "extra": {"CalibMovingAverage": True}, "first_last": True},
    "minmax, per-image mean, calib batch 8": {"calib_batch": 8, "extra": {"CalibMovingAverage": True}},
    "per-image mean + int8 symmetric activations (CalibTensorRangeSymmetric)": {
        "calib_batch": 1, "activation": "int8",
        "extra": {"CalibMovingAverage": True, "ActivationSymmetric": True, "CalibTensorRangeSymmetric": True}},
    # U8S8 saturation guards for AVX2 / AVX512 CPUs without VNNI (VPMADDUBSW sums pairs into int16):
    "minmax, reduce_range (7-bit weights)": {"calib_batch": 64, "reduce_range": True},
    "minmax, 7-bit weights in the first conv only (NNCF's overflow fix)": {"calib_batch": 64, "first_reduce_range": True},
    "minmax, U8U8 (uint8 weights)": {"calib_batch": 64, "weight": "uint8"},
}


def load_split(folder: Path, count: int | None, seed: int, mean, std, augment: bool):
    """``count`` random images of an ImageFolder split (all if ``None``), as an autocompress Split."""
    import numpy as np
    import torch
    from PIL import Image

    from autocompress.data import Split

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    idx = np.arange(len(files))
    if count is not None and count < len(files):
        idx = np.sort(np.random.default_rng(seed).permutation(idx)[:count])
    images = torch.empty((len(idx), 3, 32, 32), dtype=torch.uint8)
    for row, i in enumerate(idx):
        with Image.open(files[i]) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                im = im.resize((32, 32), Image.BILINEAR)
            images[row] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return Split(images, torch.as_tensor([labels[i] for i in idx]), tuple(mean), tuple(std), augment=augment), classes


def ort_direct(float_path: Path, calib, out: Path, *, calib_batch: int = 1, extra: dict | None = None,
               first_last: bool = False, ops: str = "all", activation: str = "uint8", weight: str = "int8",
               reduce_range: bool = False, first_reduce_range: bool = False) -> Path:
    """``onnxruntime.quantization.quantize_static`` with options int8_static does not expose.

    The same steps as ``plugins/int8_static.py``'s ``quantize_onnx_static`` (pre-process, QDQ,
    int8 per-channel symmetric weights, the same op list) plus: ``calib_batch`` images per
    calibration run, free ``extra`` options, and int8 activations.
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sys.path.insert(0, str(ROOT / "plugins"))
    from int8_static import ALWAYS_FLOAT_OPS, COMPUTE_OPS, _first_last  # noqa: E402 (read only)

    from autocompress.measure.runtimes import quiet

    prepared = out.with_name(out.stem + ".prepared.onnx")
    with quiet():
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    images = [x.numpy().astype(np.float32) for x, _ in calib.batches(calib_batch)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(images)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    options = {"WeightSymmetric": True, "ActivationSymmetric": False, **(extra or {})}
    op_types = COMPUTE_OPS if ops == "compute" else sorted(set(QDQRegistry) - ALWAYS_FLOAT_OPS)
    graph = onnx.load(str(prepared)).graph
    exclude = list(_first_last(graph)) if first_last else []
    if first_reduce_range:  # per-tensor override of the first convolution's weight (ORT TensorQuantOverrides)
        first = next(n for n in graph.node if n.op_type == "Conv")
        options["TensorQuantOverrides"] = {first.input[1]: [{"axis": 0, "reduce_range": True}]}
    with quiet():
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weight == "uint8" else QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(op_types),
            nodes_to_exclude=exclude, extra_options=options)
    prepared.unlink(missing_ok=True)
    for leftover in out.parent.glob("augmented_model*.onnx"):
        leftover.unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-samples", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--calib-samples", type=int, default=512, help="calibration images from train")
    parser.add_argument("--finetune-samples", type=int, default=5000, help="train images for the pipeline's fine-tune")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pipeline", action="store_true", help="skip the prune + fine-tune + NNCF row")
    parser.add_argument("--no-variants", action="store_true", help="only the int8_static default and the best direct variant")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/peer_nncf"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_nncf.md")
    args = parser.parse_args(argv)
    if not BASE_WEIGHTS.is_file() or not (CIFAR / "train").is_dir() or not (CIFAR / "test").is_dir():
        print(f"skipped: needs {BASE_WEIGHTS} and {CIFAR}/train, test (the shared base and CIFAR-10)")
        return 0
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        print("skipped: needs openvino and nncf (pip install openvino nncf)")
        return 0

    import json
    import shutil

    import onnxruntime
    import timm
    import torch

    from autocompress.data import DataBundle
    from autocompress.measure.accuracy import measure_latency, module_predictor, top1
    from autocompress.models import load_checkpoint
    from autocompress.plugin.contract import Artefact, TrialContext
    from autocompress.plugin.registry import discover
    from autocompress.measure.runtimes import export_onnx, get_runtime

    sys.path.insert(0, str(ROOT / "plugins"))
    from int8_static import _first_last, quantize_onnx_static  # noqa: E402 (read only: not edited here)

    started = time.time()
    torch.set_num_threads(args.threads)
    meta = json.loads(BASE_WEIGHTS.with_suffix(".json").read_text())
    mean, std = meta["mean"], meta["std"]
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)

    n_train = max(args.calib_samples, 0 if args.no_pipeline else args.finetune_samples)
    train, classes = load_split(CIFAR / "train", n_train + 500, 0, mean, std, augment=True)
    test, _ = load_split(CIFAR / "test", args.test_samples, 1, mean, std, augment=False)
    from autocompress.data import Split

    def part(split, lo, hi, augment):
        return Split(split.images[lo:hi], split.labels[lo:hi], split.mean, split.std, augment=augment)

    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    train = Split(train.images[perm], train.labels[perm], train.mean, train.std, augment=True)
    val = part(train, n_train, n_train + 500, False)
    calib = part(train, 0, args.calib_samples, False)
    finetune = part(train, 0, n_train, True)
    print(f"data: {len(calib)} calibration, {len(finetune)} fine-tune, {len(val)} val (CIFAR-10 train), "
          f"{len(test)} test images; {time.time() - started:.0f}s")

    def context(train_split, teacher=None, sub="q") -> TrialContext:
        bundle = DataBundle(train_split, val, test, 10, classes, 32)
        work = args.workdir / sub
        work.mkdir(parents=True, exist_ok=True)
        return TrialContext(data=bundle, teacher=teacher, device=torch.device("cpu"), runtime="openvino",
                            example_input=test.example(1), workdir=work, seed=0, batch_size=64, threads=args.threads)

    base = timm.create_model("resnet18", num_classes=10).eval()
    load_checkpoint(base, BASE_WEIGHTS)
    ort, ov = get_runtime("onnxruntime"), get_runtime("openvino")
    example = test.example(1)
    rows: list[dict] = []
    predictors = {}

    def add(name, group, predict, size, precision, runtime, seconds, notes=""):
        t0 = time.time()
        acc = top1(predict, test, batch_size=64)
        rows.append({"name": name, "group": group, "acc": acc, "size_mb": size / 1e6, "precision": precision,
                     "runtime": runtime, "make_s": seconds, "notes": notes})
        predictors[name] = predict
        print(f"  {name:<70} {acc:6.2f}%  {size / 1e6:6.2f} MB  ({seconds:.0f}s to make, {time.time() - t0:.0f}s to test)")

    print("fp32")
    state = args.workdir / "base.pth"
    torch.save(base.state_dict(), state)
    add("fp32 torch eager", "fp32", module_predictor(base), state.stat().st_size, "fp32", "torch", 0)
    t0 = time.time()
    ort_fp32 = ort.save(base, example, args.workdir / "fp32.onnx")
    add("fp32 ONNX Runtime", "fp32", ort.load(ort_fp32, threads=args.threads), ort_fp32.size_bytes(), "fp32",
        "onnxruntime", time.time() - t0)
    t0 = time.time()
    ov_fp32 = ov.save(base, example, args.workdir / "fp32.xml")
    add("fp32 OpenVINO", "fp32", ov.load(ov_fp32, threads=args.threads), ov_fp32.size_bytes(), "fp32", "openvino",
        time.time() - t0)

    registry = discover()
    nncf_cls = registry.get("nncf_int8")
    print("NNCF int8 (OpenVINO)")
    t0 = time.time()
    art = nncf_cls.from_params({"subset_size": args.calib_samples}).apply(copy.deepcopy(base), context(calib, sub="nncf"))
    add(f"NNCF int8, performance preset, {args.calib_samples} images", "nncf", ov.load(art, threads=args.threads),
        art.size_bytes(), "int8", "openvino", time.time() - t0)

    print("ORT static int8")
    float_onnx = export_onnx(base, example, args.workdir / "float.onnx")
    ctx = context(calib, sub="ort")
    batches = -(-args.calib_samples // ctx.batch_size)
    plugin_variants = dict(list(PLUGIN_VARIANTS.items())[:1]) if args.no_variants else PLUGIN_VARIANTS
    for i, (name, opts) in enumerate(plugin_variants.items()):
        opts = dict(opts)
        exclude = _first_last if opts.pop("keep_first_last_float", False) else None
        t0 = time.time()
        out = quantize_onnx_static(float_onnx, ctx, ctx.workdir / f"p{i}.onnx", calibration_batches=batches,
                                   exclude=exclude, **opts)
        a = Artefact(out, "onnxruntime", "int8")
        add(f"ORT int8 {name}", "ort-plugin", ort.load(a, threads=args.threads), a.size_bytes(), "int8", "onnxruntime",
            time.time() - t0, "int8_static option(s): " + (", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults")
            + (", keep_first_last_float=True" if exclude else ""))
    direct_variants = dict(list(DIRECT_VARIANTS.items())[:1]) if args.no_variants else DIRECT_VARIANTS
    for i, (name, opts) in enumerate(direct_variants.items()):
        t0 = time.time()
        out = ort_direct(float_onnx, calib, ctx.workdir / f"d{i}.onnx", **opts)
        a = Artefact(out, "onnxruntime", "int8")
        add(f"ORT int8 {name}", "ort-direct", ort.load(a, threads=args.threads), a.size_bytes(), "int8", "onnxruntime", time.time() - t0,
            "direct quantize_static: " + ", ".join(f"{k}={v}" for k, v in opts.items()))

    if not args.no_pipeline:
        print("pipeline: 50% channel_prune + logit_kd 1 epoch + NNCF int8")
        t0 = time.time()
        pctx = context(finetune, teacher=copy.deepcopy(base), sub="pipe")
        pruned = registry.get("channel_prune").from_params({"ratio": 0.5}).apply(copy.deepcopy(base), pctx)
        tuned = registry.get("logit_kd").from_params({"epochs": 1}).apply(pruned, pctx).cpu().eval()
        t_ft = time.time() - t0
        p_fp32 = ov.save(tuned, example, args.workdir / "pipe" / "fp32.xml")
        add("pruned 50% + logit_kd 1 ep, fp32 OpenVINO", "pipeline", ov.load(p_fp32, threads=args.threads),
            p_fp32.size_bytes(), "fp32", "openvino", t_ft, f"fine-tune on {len(finetune)} images")
        t0 = time.time()
        p_art = nncf_cls.from_params({"subset_size": args.calib_samples}).apply(copy.deepcopy(tuned), context(calib, sub="pipe-q"))
        add("pruned 50% + logit_kd 1 ep + NNCF int8", "pipeline", ov.load(p_art, threads=args.threads),
            p_art.size_bytes(), "int8", "openvino", t_ft + time.time() - t0)

    print(f"latency: {len(predictors)} predictors, interleaved, batch 1, {args.threads} threads")
    lat = measure_latency(predictors, example, warmup=20, repeats=50, rounds=5, threads=args.threads)
    for row in rows:
        row["lat"] = lat[row["name"]]

    fp32 = rows[0]["acc"]
    nncf_acc = next(r["acc"] for r in rows if r["group"] == "nncf")
    ort_rows = [r for r in rows if r["group"].startswith("ort")]
    best = max(ort_rows, key=lambda r: r["acc"])
    lines = [
        "# Peer check: NNCF int8 on OpenVINO vs our ONNX Runtime int8 (issue 9)", "",
        f"Base: `{BASE_WEIGHTS.relative_to(SHARED.parent)}` (timm resnet18, CIFAR-10, 32x32). "
        f"Test top-1 on {len(test)} CIFAR-10 test images{' (a random subset)' if args.test_samples else ''}; "
        f"calibration: {len(calib)} CIFAR-10 train images. Batch 1, {args.threads} threads.", "",
        f"Command: `python benchmarks/peer_nncf.py{' ' + ' '.join(argv if argv is not None else sys.argv[1:]) if (argv if argv is not None else sys.argv[1:]) else ''}` "
        f"({dt.datetime.now():%Y-%m-%d %H:%M}, {time.time() - started:.0f} s)", "",
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end; "
        "compare rows of this table, which were timed in one interleaved run, not against other machines). "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
        f"nncf {nncf.__version__}, Python {platform.python_version()}.", "",
        "| model | runtime | top-1 % | vs fp32 (pp) | size MB | latency ms (median) | p10-p90 ms | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        l = r["lat"]
        lines.append(f"| {r['name']} | {r['runtime']} | {r['acc']:.2f} | {r['acc'] - fp32:+.2f} | {r['size_mb']:.2f} | "
                     f"{l.median_ms:.3f} | {l.p10_ms:.3f}-{l.p90_ms:.3f} | {r['notes']} |")
    gap = nncf_acc - best["acc"]
    lines += [
        "", f"Best ORT int8: **{best['name']}** at {best['acc']:.2f} % vs NNCF {nncf_acc:.2f} %: "
        f"{'within' if gap <= 0.5 else 'NOT within'} 0.5 pp (gap {gap:+.2f} pp).", "",
        "Notes:",
        "- NNCF collects activation ranges per image and averages them (min/max per sample, mean over samples: "
        "`RangeEstimatorParametersSet.MEAN_MINMAX`) and then corrects biases; ORT's MinMax takes the global "
        "extremes over all calibration batches. `CalibMovingAverage` with one image per calibration run gives "
        "ORT the same mean-of-per-image ranges.",
        "- The U8S8 rows (int8 weights x uint8 activations) are exact on CPUs with AVX512-VNNI/AMX such as this one. "
        "On AVX2 or AVX512 CPUs without VNNI, ONNX Runtime multiplies with VPMADDUBSW, which sums pairs of products "
        "into int16 and saturates; NNCF guards against the same problem by default (`OverflowFix.FIRST_LAYER`: "
        "7-bit weights in the first convolution). The `reduce_range`, `first conv only` and `U8U8` rows are the "
        "ORT counterparts; here they move top-1 by no more than the sampling noise, and they matter only on such CPUs.",
        f"- Top-1 on {len(test)} images moves in steps of {100 / len(test):.2f} pp; differences of a few tenths "
        "of a pp between rows are within sampling noise.",
        "- OpenVINO runs with `INFERENCE_PRECISION_HINT=f32`: on CPUs with AMX/AVX512-BF16 its default would run "
        "float layers in bf16.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
