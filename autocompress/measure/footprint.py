"""Figures beyond accuracy, latency and size: MACs, int8 MACs, peak memory and energy of one inference.

Every figure is measured or counted, never estimated; where this machine cannot give one it is
``None`` with the reason (``metrics["not_measured"]``).

* **MACs** (:func:`count_macs`): ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass
  of the float module that is exported (the pruned / distilled structure, before quantization), at
  the configured input (``device.batch_size`` x 3 x ``img_size`` x ``img_size``). MACs = FLOPs / 2:
  torch counts 2 FLOPs per multiply-accumulate in the ops it has formulas for — the matmul family
  (``mm``, ``addmm``, ``bmm``, ``baddbmm``), ``convolution`` and scaled-dot-product attention
  (its CPU kernel, which torch has no formula for, with the formula of the fused GPU ones).
  Elementwise ops, normalisation, pooling, softmax and bias additions are not counted. Zeroed
  weights (unstructured pruning) still count: the runtimes run them dense.
* **int8 MACs** (:func:`count_int8_macs`): from the saved artefact's graph. A compute op (ONNX
  ``Conv``/``MatMul``/``Gemm``; PT2E ``conv``/``linear``/``matmul``; OpenVINO ``Convolution``/
  ``GroupConvolution``/``MatMul``) runs in int8 when both its data and its weight inputs come out of
  dequantize ops (ONNX ``DequantizeLinear``, PT2E ``dequantize_per_tensor``/``_per_channel``,
  OpenVINO ``FakeQuantize`` or an int8 constant), which is the pattern the runtimes fuse into
  integer kernels; ONNX's integer ops (``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``,
  ``MatMulInteger``) count as such. Its MACs are ``prod(output shape) x`` the reduction length
  (``C_in / groups x kernel`` for a convolution, ``K`` for a matmul) at the configured input.
  An fp32 artefact has none (0).
* **Memory** (:func:`measure_memory`): in a fresh Python process, with the runtime's package
  already imported: the resident set before loading the artefact, then the peak resident set
  after loading it and running one inference; ``memory_mb`` is the growth (MB = 10**6 bytes).
  ONNX Runtime and OpenVINO artefacts are loaded as the search and a latency agent load them
  (:mod:`autocompress.device.sessions`, numpy input, no torch in the process), ``.pt2`` programs through
  the torch runtime (a quantized one compiles on its first call: the compiler's memory counts).
  On Linux the peak is ``VmHWM`` of ``/proc/self/status``, reset just before loading by writing
  ``5`` to ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``.
* **Energy** (:func:`energy_meter`, :class:`EnergyTracker`): a hardware counter read where the
  latency measurement passes from one model's rounds to the other's and where warm-up ends;
  energy per inference = the counter's growth over a model's timed rounds / its timed calls. CPUs:
  Linux powercap RAPL package domains (``/sys/class/powercap/intel-rapl:N/energy_uj``, wrap-around
  at ``max_energy_range_uj``): the whole package, so whatever else runs on it is counted too.
  NVIDIA GPUs: NVML's total-energy counter (``pynvml``, GPUs since Volta). Neither: ``None`` and why.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

POWERCAP = Path("/sys/class/powercap")
MEMORY_METHOD_LINUX = ("fresh process: peak resident set (VmHWM, reset via /proc/self/clear_refs) after loading "
                       "the artefact and one inference, minus the resident set before loading; the runtime's package "
                       "imported first (ONNX Runtime / OpenVINO with numpy, no torch; torch programs with torch)")
MEMORY_METHOD_OTHER = ("fresh process: peak resident set (ru_maxrss) after loading the artefact and one inference, "
                       "minus the resident set before loading; the runtime's package imported first")
INT8_METHOD = ("artefact graph: Conv/MatMul/Gemm-like ops whose data and weight inputs are both dequantized "
               "(or ONNX integer ops), MACs = output elements x reduction length")
ENERGY_METHOD = ("counter read where the latency measurement enters a predictor's timed rounds and leaves them; "
                 "energy per call = the growth over its rounds / its timed calls (the whole package or GPU)")
MACS_METHOD = ("torch.utils.flop_counter.FlopCounterMode on the exported float module, one forward at the "
               "configured input; MACs = FLOPs / 2 of the counted ops (convolution, mm/addmm/bmm/baddbmm, "
               "scaled-dot-product attention); elementwise ops, normalisation, pooling and bias additions not counted")


# ----------------------------------------------------------------------------- one artefact's figures


class Footprint:
    """MACs, int8 MACs, energy and (on request) memory of one measured artefact.

    Attributes:
        metrics: ``macs``, ``macs_int8``, ``memory_mb``, ``energy_mj``, ``energy_source`` and, for
            each figure that is ``None``, ``not_measured[figure]`` = why.
        detail: How each figure was measured (``record["footprint"]``).
    """

    def __init__(self, artefact, *, threads: int, device: str, shape: list[int]) -> None:
        self.artefact, self.threads, self.device, self.shape = artefact, threads, device, shape
        self.metrics: dict[str, Any] = {"macs": None, "macs_int8": None, "memory_mb": None, "energy_mj": None,
                                        "energy_source": None}
        self.detail: dict[str, Any] = {}
        self._why: dict[str, str] = {}
        self._memory_done = False

    def why(self, key: str) -> str | None:
        """Why figure ``key`` is ``None`` (``None`` when it was measured)."""
        return self._why.get(key)

    def _na(self, key: str, reason: str) -> None:
        self.metrics[key] = None
        self._why[key] = reason
        self.metrics["not_measured"] = dict(self._why)

    def memory(self, timeout: float = 600.0) -> None:
        """Measures peak memory of one inference (:func:`measure_memory`) unless already measured."""
        if self._memory_done:
            return
        self._memory_done = True
        try:
            mb, detail = measure_memory(self.artefact, threads=self.threads, device=self.device, shape=self.shape,
                                        timeout=timeout)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            self._na("memory_mb", str(err))
            self.detail["memory"] = {"reason": str(err)}
            return
        self.metrics["memory_mb"] = mb
        self.detail["memory"] = detail

    def skip_memory(self, reason: str) -> None:
        """Records why memory was not measured (unless it was)."""
        if not self._memory_done:
            self._na("memory_mb", reason)
            self.detail["memory"] = {"reason": reason}


def measure_footprint(artefact, *, module: torch.nn.Module | None, example: torch.Tensor, known: dict | None,
                      energy: float | None, energy_source: str | None, no_energy: str | None,
                      base_energy: float | None = None, threads: int = 1, device: str = "cpu") -> Footprint:
    """Counts MACs and int8 MACs of an artefact and files its energy; memory on :meth:`Footprint.memory`.

    Args:
        artefact: The saved artefact.
        module: The float module that was saved or quantized; ``None`` for a reused artefact.
        example: The input of one call (its shape is the configured input).
        known: Figures recorded for these exact bytes before (``macs``, ``macs_int8``, ``macs_by_op``).
        energy: Energy per call in mJ over the latency rounds, or ``None``.
        energy_source: The counter read (``rapl:package-0``), or ``None``.
        no_energy: Why there is no counter, where there is none.
        base_energy: The base's energy per call in the same window.
        threads: Threads the runtime is loaded with (memory).
        device: ``cpu`` or ``cuda``.
    """
    shape = list(example.shape)
    fp = Footprint(artefact, threads=threads, device=device, shape=shape)
    if module is not None:
        macs, by_op = count_macs(module, example)
        fp.metrics["macs"] = macs
        fp.detail["macs"] = {"method": MACS_METHOD, "input": shape, "by_op": by_op}
    elif known is not None and known.get("macs") is not None:
        fp.metrics["macs"] = known["macs"]
        fp.detail["macs"] = {"method": MACS_METHOD, "input": shape, "by_op": known.get("macs_by_op"),
                             "from": "the reused artefact's record"}
    else:
        fp._na("macs", "no float module to count (an artefact reused from an earlier autocompress's cache)")
    if artefact.precision == "fp32":
        fp.metrics["macs_int8"] = 0
        fp.detail["macs_int8"] = {"method": "fp32 artefact: no int8 layer"}
    else:
        try:
            int8, ops = count_int8_macs(artefact, shape[0])
            fp.metrics["macs_int8"] = int8
            fp.detail["macs_int8"] = {"method": INT8_METHOD, "ops": ops}
        except Exception as err:  # noqa: BLE001 - a graph that cannot be read costs the figure, not the trial
            fp._na("macs_int8", f"{type(err).__name__}: {err}")
            fp.detail["macs_int8"] = {"reason": fp.why("macs_int8")}
    if energy is not None:
        fp.metrics["energy_mj"], fp.metrics["energy_source"] = energy, energy_source
        fp.detail["energy"] = {"source": energy_source, "method": ENERGY_METHOD, "base_energy_mj": base_energy}
    else:
        reason = no_energy or "the counter gave no reading over the timed calls"
        fp._na("energy_mj", reason)
        fp.detail["energy"] = {"reason": reason}
    return fp


# ----------------------------------------------------------------------------- MACs


def count_macs(module: torch.nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """MACs of one forward pass of ``module`` on ``example``, counted by torch.

    Args:
        module: The float module (evaluation mode is set).
        example: The input, e.g. ``[batch, 3, H, W]`` at the measured batch size.

    Returns:
        ``(macs, {aten op: macs})``: FLOPs / 2 of the ops torch's ``FlopCounterMode`` counts.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    module = module.eval()
    # on CPU, scaled-dot-product attention runs an op torch has no formula for: counted as the fused ones are
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_attention: lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)} if cpu_attention else None
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), counter:
        module(example.detach().cpu())
    by_op = {str(op).removeprefix("aten."): int(flops) // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()) // 2, dict(sorted(by_op.items()))


def count_int8_macs(artefact, batch_size: int) -> tuple[int, int]:
    """MACs that run in int8 in a quantized artefact, from its graph (see the module docstring).

    Args:
        artefact: An :class:`~autocompress.plugin.contract.Artefact` (``onnxruntime``, ``torch`` or ``openvino``).
        batch_size: The batch of one call (symbolic batch axes take this value).

    Returns:
        ``(int8 MACs, int8 compute ops)``.

    Raises:
        ValueError: A runtime whose graphs are not read, or a compute op whose shapes are unknown.
    """
    counters = {"onnxruntime": _onnx_int8_macs, "torch": _pt2_int8_macs, "openvino": _openvino_int8_macs}
    if artefact.runtime not in counters:
        raise ValueError(f"int8 MACs are not counted for {artefact.runtime} artefacts")
    return counters[artefact.runtime](Path(artefact.path), batch_size)


_ONNX_INTEGER_OPS = {  # op: (data input, weight input) of ONNX's integer operators
    "QLinearConv": (0, 3), "ConvInteger": (0, 1), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1),
}
_ONNX_FLOAT_OPS = {"Conv": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1)}


def _onnx_int8_macs(path: Path, batch_size: int) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    del graph.value_info[:]  # inferred again below with the batch axis fixed
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch_size
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes: dict[str, list[int | None]] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    producer = {out: node for node in graph.node for out in node.output}

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    macs = ops = 0
    for node in graph.node:
        if node.op_type in _ONNX_INTEGER_OPS:
            data, weight = _ONNX_INTEGER_OPS[node.op_type]
        elif node.op_type in _ONNX_FLOAT_OPS and len(node.input) > 1 and all(
                dequantized(node.input[i]) for i in _ONNX_FLOAT_OPS[node.op_type]):
            data, weight = _ONNX_FLOAT_OPS[node.op_type]
        else:
            continue
        out, w, x = shapes.get(node.output[0]), shapes.get(node.input[weight]), shapes.get(node.input[data])
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            reduction = w[1:] if w else None
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            reduction = ([x[0]] if trans_a else [x[-1]]) if x else None
        else:
            reduction = [x[-1]] if x else None
        if not out or not reduction or None in out or None in reduction:
            raise ValueError(f"the shapes of ONNX node {node.name or node.op_type} are unknown")
        macs += math.prod(out) * math.prod(reduction)
        ops += 1
    return macs, ops


def _pt2_int8_macs(path: Path, batch_size: int) -> tuple[int, int]:
    from autocompress.store import load_exported

    program = load_exported(path)
    compute = {"conv1d", "conv2d", "conv3d", "convolution", "linear", "matmul", "mm", "addmm", "bmm"}

    def dequantized(arg) -> bool:
        return isinstance(arg, torch.fx.Node) and "dequantize" in str(arg.target)

    def dims(node) -> list[int]:
        shape = node.meta["val"].shape
        return [batch_size if i == 0 and not isinstance(d, int) else int(d) for i, d in enumerate(shape)]

    macs = ops = 0
    for node in program.graph.nodes:
        name = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if node.op != "call_function" or name not in compute:
            continue
        data, weight = (node.args[1], node.args[2]) if name == "addmm" else (node.args[0], node.args[1])
        if not (dequantized(data) and dequantized(weight)):
            continue
        out, w, x = dims(node), dims(weight), dims(data)
        reduction = w[1:] if name.startswith("conv") else [x[-1]]
        macs += math.prod(out) * math.prod(reduction)
        ops += 1
    return macs, ops


def _openvino_int8_macs(path: Path, batch_size: int) -> tuple[int, int]:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape[0].is_dynamic:
        shape[0] = batch_size
        model.reshape({model.inputs[0]: shape})
    # ops that keep int8 data int8 (OpenVINO's precision-preserving ops), between a FakeQuantize and the compute op
    preserving = {"MaxPool", "AvgPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "StridedSlice", "Split",
                  "VariadicSplit", "DepthToSpace", "Concat"}
    decompression = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}  # int8 weights -> float, folded

    def activation(output, depth: int = 0) -> bool:
        node = output.get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        data = range(node.get_input_size()) if kind == "Concat" else [0]  # the others: shapes, axes, begins
        return kind in preserving and depth < 8 and all(activation(node.input_value(i), depth + 1) for i in data)

    def weight(output, depth: int = 0) -> bool:
        node = output.get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type() in (ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4)
        return kind in decompression and depth < 6 and weight(node.input_value(0), depth + 1)

    macs = ops = 0
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        if not (activation(node.input_value(0)) and (weight(node.input_value(1)) or activation(node.input_value(1)))):
            continue
        out = list(node.get_output_partial_shape(0).to_shape())
        w = list(node.get_input_partial_shape(1).to_shape())
        x = list(node.get_input_partial_shape(0).to_shape())
        if kind == "Convolution":
            reduction = w[1:]
        elif kind == "GroupConvolution":
            reduction = w[2:]
        else:
            transpose_a = node.get_attributes().get("transpose_a", False)
            reduction = [x[-2] if transpose_a else x[-1]]
        macs += math.prod(out) * math.prod(reduction)
        ops += 1
    return macs, ops


# ----------------------------------------------------------------------------- memory

_CHILD = r"""
import json, os, resource, sys
args = json.loads(sys.argv[1])
runtime = args["runtime"]
# the runtime's own package (and what feeds it) is imported before the baseline: its code is not the model's memory
if runtime in ("onnxruntime", "openvino"):  # loaded the way the search and an agent load them, without torch
    import numpy as np
    import autocompress.device.sessions as sessions
    if runtime == "onnxruntime":
        import onnxruntime
    else:
        import openvino
    x = np.random.default_rng(0).standard_normal(args["shape"]).astype(np.float32)
else:
    import torch
    import torch._inductor.config
    if args["precision"] != "fp32":  # a PT2E program's quantize/dequantize ops are registered by torchao
        try:
            import torchao.quantization.pt2e
        except ImportError:
            pass
    from autocompress.measure.artefact import Artefact
    from autocompress.measure.runtimes import get_runtime
    x = torch.randn(*args["shape"])


def status():
    try:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) * 1024 for k, v in (l.split(":", 1) for l in fh) if k in ("VmRSS", "VmHWM")}
    except OSError:
        return {}


reset = False
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak (VmHWM) to the current resident set
    reset = "VmHWM" in status()
except OSError:
    pass
if reset:
    before = status()["VmRSS"]
else:
    import psutil
    before = psutil.Process().memory_info().rss
if runtime == "onnxruntime":
    predict = sessions.onnx_predictor(sessions.onnx_session(args["path"], threads=args["threads"], device=args["device"]))
elif runtime == "openvino":
    weights = next((f for f in args["extra"] if f.endswith(".bin")), args["path"][:-4] + ".bin")
    predict = sessions.openvino_predictor(args["path"], weights, threads=args["threads"])
else:
    art = Artefact(args["path"], runtime, args["precision"], extra_files=args["extra"])
    predict = get_runtime(runtime).load(art, threads=args["threads"], device=args["device"])
predict(x)
if reset:
    peak = status()["VmHWM"]
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print("AUTOCOMPRESS_MEMORY " + json.dumps({"before": before, "peak": peak, "linux": reset}))
"""


def measure_memory(artefact, *, threads: int, device: str, shape: list[int], timeout: float = 600.0
                   ) -> tuple[float, dict[str, Any]]:
    """Peak resident-set growth of loading ``artefact`` and running one inference, in a fresh process.

    Args:
        artefact: The saved :class:`~autocompress.plugin.contract.Artefact`.
        threads: Intra-op threads the runtime is loaded with (thread pools take memory too).
        device: ``cpu`` or ``cuda`` (host memory is measured either way).
        shape: The input shape of the call.
        timeout: Seconds before the process is killed.

    Returns:
        ``(memory MB, details)``: the growth in MB (10**6 bytes), and the method, the resident set
        before loading and the peak, in MB.

    Raises:
        RuntimeError: The process failed or printed no figure.
    """
    args = {"path": str(artefact.path), "runtime": artefact.runtime, "precision": artefact.precision,
            "extra": [str(f) for f in artefact.extra_files], "threads": int(threads), "device": device,
            "shape": list(shape)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("AUTOCOMPRESS_MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory measurement process failed (exit {proc.returncode}): {tail}")
    got = json.loads(line.split(" ", 1)[1])
    detail = {"method": MEMORY_METHOD_LINUX if got["linux"] else MEMORY_METHOD_OTHER,
              "rss_before_mb": round(got["before"] / 1e6, 3), "peak_mb": round(got["peak"] / 1e6, 3),
              "seconds": round(time.perf_counter() - t0, 3)}
    return round(max(got["peak"] - got["before"], 0) / 1e6, 3), detail


# ----------------------------------------------------------------------------- energy


@dataclass
class EnergyMeter:
    """A cumulative energy counter: ``read()`` gives millijoules since an arbitrary origin.

    Attributes:
        source: What is read, e.g. ``rapl:package-0`` or ``nvml:NVIDIA H100``.
        read: Returns the counter in mJ, corrected for wrap-around between consecutive reads.
    """

    source: str
    read: Callable[[], float]


@dataclass
class _RaplDomain:
    path: Path
    name: str
    range_uj: int
    last: int | None = None
    total_uj: int = 0

    def read(self) -> int:
        now = int((self.path / "energy_uj").read_text())
        if self.last is not None:
            delta = now - self.last
            if delta < 0:  # the counter wrapped at max_energy_range_uj
                delta += self.range_uj + 1
            self.total_uj += delta
        self.last = now
        return self.total_uj


@dataclass
class _Rapl:
    domains: list[_RaplDomain] = field(default_factory=list)

    def read(self) -> float:
        return sum(d.read() for d in self.domains) / 1000.0


def rapl_meter(root: Path = POWERCAP) -> tuple[EnergyMeter | None, str | None]:
    """The RAPL package domains under ``root`` as one meter, or ``(None, why not)``."""
    if not root.is_dir():
        return None, f"no readable RAPL counter under {root} (it does not exist)"
    found, unreadable = [], []
    for zone in sorted(root.glob("intel-rapl:*")):
        name_file = zone / "name"
        if zone.name.count(":") != 1 or not name_file.is_file():  # sub-zones (core, uncore, dram) are inside a package
            continue
        name = name_file.read_text().strip()
        if not name.startswith("package"):
            continue
        try:
            int((zone / "energy_uj").read_text())
            range_uj = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            unreadable.append(str(zone / "energy_uj"))
            continue
        found.append(_RaplDomain(zone, name, range_uj))
    if not found:
        if unreadable:
            return None, (f"no readable RAPL counter under {root} ({unreadable[0]} is not readable by this user: "
                          "root only since Linux 5.10)")
        return None, f"no readable RAPL counter under {root} (no package domain)"
    meter = _Rapl(found)
    meter.read()  # the first read sets each domain's origin
    return EnergyMeter("rapl:" + "+".join(d.name for d in found), meter.read), None


def nvml_meter(index: int = 0) -> tuple[EnergyMeter | None, str | None]:
    """NVML's total-energy counter of GPU ``index``, or ``(None, why not)``."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py) to read the GPU's energy counter"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as err:  # noqa: BLE001 - no driver, no GPU, or a GPU without the counter (before Volta)
        return None, f"NVML has no energy counter here: {type(err).__name__}: {err}"
    return EnergyMeter(f"nvml:{name}", lambda: float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))), None


def energy_meter(device: str = "cpu") -> tuple[EnergyMeter | None, str | None]:
    """The counter that measures this machine's energy for ``device``, or ``(None, why not)``.

    ``cpu``: RAPL package domains. ``cuda``: NVML on the GPU (the host CPU is not included).
    """
    if device == "cuda":
        return nvml_meter(torch.cuda.current_device() if torch.cuda.is_available() else 0)
    meter, why = rapl_meter()
    if meter is None:
        gpu = "an NVIDIA GPU is present, but device.type is cpu" if _has_nvidia() else "no NVIDIA GPU"
        why = f"{why}, {gpu}"
    return meter, why


class EnergyTracker:
    """Energy per call of predictors timed by a latency measurement, read from one meter.

    :meth:`wrap` gives predictors that read the meter only when the measurement passes from one
    predictor to another or from a predictor's warm-up to its timed calls: a handful of reads a
    measurement, each landing in the first call of a round (which the median ignores). The timing
    loop itself is not touched.

    Args:
        meter: The energy counter.
        warmup: Untimed calls each predictor gets first (their energy is not counted).
    """

    def __init__(self, meter: EnergyMeter, warmup: int) -> None:
        self.meter, self.warmup = meter, warmup
        self.calls: dict[str, int] = {}
        self.spent: dict[str, float] = {}
        self._current: str | None = None
        self._timed = False
        self._last = 0.0

    def wrap(self, predictors: dict[str, Callable]) -> dict[str, Callable]:
        """The predictors, each counting its calls and reading the meter where a segment starts."""
        return {name: self._wrapped(name, predict) for name, predict in predictors.items()}

    def _wrapped(self, name: str, predict: Callable) -> Callable:
        self.calls[name], self.spent[name] = 0, 0.0

        def wrapped(x):
            n = self.calls[name]
            if name != self._current or n == self.warmup:
                self._switch(name, timed=n >= self.warmup)
            self.calls[name] = n + 1
            return predict(x)

        return wrapped

    def _switch(self, name: str | None, timed: bool) -> None:
        now = self.meter.read()
        if self._current is not None and self._timed:
            self.spent[self._current] += now - self._last
        self._current, self._timed, self._last = name, timed, now

    def finish(self) -> dict[str, float | None]:
        """Energy per timed call in mJ of each predictor (``None`` for one that made no timed call)."""
        self._switch(None, False)
        return {name: round(self.spent[name] / (calls - self.warmup), 6) if calls > self.warmup else None
                for name, calls in self.calls.items()}


@functools.lru_cache(maxsize=2)
def energy_unavailable(device: str = "cpu") -> str | None:
    """Why energy cannot be measured here for ``device`` (one phrase), or ``None`` when it can."""
    return energy_meter(device)[1]


def _has_nvidia() -> bool:
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists()
