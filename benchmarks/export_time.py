"""How long an ONNX export takes: the TorchScript exporter that ``export_onnx`` tries first vs the
``torch.export``-based one it falls back to. A search exports in every trial (twice with a
structure probe), so this is a fixed cost per trial.

Per model (timm, random weights with no norm layer zeroed, 32x32, 10 classes): median wall seconds of ``--repeats``
exports each way, alternated, the first of each dropped (warm-up), the file sizes, and the
largest difference between the two files' ONNX Runtime outputs on one batch.

    python benchmarks/export_time.py          # ~1.5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224")


def _export(model, example, path: Path, dynamo: bool) -> float:
    from autocompress.measure.runtimes import quiet

    t0 = time.perf_counter()
    with torch.no_grad(), quiet():
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, opset_version=18,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_time")
    args = parser.parse_args(argv)
    from autocompress.device.machine import describe

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in MODELS:
        kwargs = {"img_size": 32} if name.startswith("vit") else {}
        model = timm.create_model(name, num_classes=10, pretrained=False, **kwargs).eval()
        torch.manual_seed(0)
        for module in model.modules():  # like trained weights: timm zero-inits some norms, which an exporter may fold away
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) and module.weight is not None:
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
        example = torch.randn(2, 3, 32, 32)
        times = {"torchscript": [], "torch.export": []}
        for _ in range(args.repeats):
            for way in times:
                times[way].append(_export(model, example, tmp / f"{name}-{way}.onnx", way == "torch.export"))
        outs = [ort.InferenceSession(str(tmp / f"{name}-{way}.onnx")).run(None, {"input": example.numpy()})[0]
                for way in times]
        rows.append({"model": name, **{f"{way}_s": statistics.median(t[1:]) for way, t in times.items()},
                     **{f"{way}_bytes": (tmp / f"{name}-{way}.onnx").stat().st_size for way in times},
                     "max_abs_diff": float(np.abs(outs[0] - outs[1]).max())})
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": describe(2), "torch": torch.__version__, "rows": rows}
    (args.out / "export_time.json").write_text(json.dumps(report, indent=1))
    lines = [f"Machine: {report['machine'].get('cpu', '?')}, torch {torch.__version__}, 2 threads; "
             "`python benchmarks/export_time.py`.", "",
             "| model (32x32) | TorchScript exporter (s) | torch.export-based (s) | speed-up | file MB (TS / export) "
             "| max output difference |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['torchscript_s']:.2f} | {r['torch.export_s']:.2f} | "
                     f"{r['torch.export_s'] / r['torchscript_s']:.1f}x | {r['torchscript_bytes'] / 1e6:.2f} / "
                     f"{r['torch.export_bytes'] / 1e6:.2f} | {r['max_abs_diff']:.1e} |")
    (args.out / "export_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
