"""Deploy runtimes: how a float module is saved for one, and how an artefact is loaded and run.

A runtime turns an :class:`~autocompress.plugin.contract.Artefact` into a predictor, a callable from a
float32 ``[B,3,H,W]`` tensor to logits, with a fixed thread count. Latency and accuracy are
always measured through the runtime the artefact is saved for.
"""

from __future__ import annotations

import abc
import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from autocompress.config import missing_runtime_package
from autocompress.device import onnx_predictor, onnx_session, openvino_predictor
from autocompress.errors import UserError
from autocompress.measure.artefact import Artefact

Predictor = Callable[[torch.Tensor], torch.Tensor]


class Runtime(abc.ABC):
    """A deploy runtime."""

    name: str
    suffix: str

    @abc.abstractmethod
    def save(self, model: torch.nn.Module, example: torch.Tensor, path: Path) -> Artefact:
        """Saves a float module as this runtime's artefact at ``path``."""

    @abc.abstractmethod
    def load(self, artefact: Artefact, *, threads: int, device: str = "cpu") -> Predictor:
        """Loads an artefact into a predictor using ``threads`` intra-op threads."""

    def missing(self) -> str | None:
        """One line naming what to install when this runtime's package is absent, else ``None``."""
        return None


class OnnxRuntime(Runtime):
    """ONNX Runtime: artefacts are ``.onnx`` files with weights inside (no external data)."""

    name = "onnxruntime"
    suffix = ".onnx"

    def save(self, model, example, path):
        export_onnx(model, example, Path(path))
        store_sparse_initializers(Path(path))
        return Artefact(Path(path), self.name, "fp32")

    def load(self, artefact, *, threads, device="cpu"):
        predict_array = onnx_predictor(onnx_session(str(artefact.path), threads=threads, device=device))

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(predict_array(x.detach().cpu().numpy().astype(np.float32)))

        return predict


class TorchRuntime(Runtime):
    """PyTorch eager: artefacts are ``torch.export`` programs (``.pt2``)."""

    name = "torch"
    suffix = ".pt2"

    def save(self, model, example, path):
        model = model.eval().cpu()
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad(), quiet():
            program = torch.export.export(model, (_batch_of_two(example),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
        return Artefact(Path(path), self.name, "fp32")

    def load(self, artefact, *, threads, device="cpu"):
        torch.set_num_threads(threads)
        from autocompress.store import load_exported

        module = load_exported(artefact.path).module()
        dev = torch.device(device)
        module.to(dev)
        if artefact.precision != "fp32":
            return _compiled_predictor(module, dev)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x.to(dev)).float().cpu()

        return predict


def _compiled_predictor(module: torch.nn.Module, dev: torch.device) -> Predictor:
    """A quantized (PT2E) program run through ``torch.compile``.

    Eagerly, a PT2E int8 program runs dequantize + float kernels (slower than fp32); inductor
    with weight freezing fuses the quantize/dequantize patterns into oneDNN int8 kernels. The
    first call per input shape compiles (seconds to a minute); the cache is kept under the
    system temp folder (``TORCHINDUCTOR_CACHE_DIR``, unless already set), never under ``~``.
    """
    import os
    import tempfile

    import torch._inductor.config as inductor_config

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "autocompress_inductor"))
    compiled = torch.compile(module)

    def predict(x: torch.Tensor) -> torch.Tensor:
        # freezing is patched per call: compilation (first call per shape) happens inside it
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(x.to(dev)).float().cpu()

    return predict


class OpenVinoRuntime(Runtime):
    """OpenVINO on CPU: artefacts are IR pairs, ``model.xml`` (graph) + ``model.bin`` (weights).

    ``save`` exports the float module to ONNX (the same graph ONNX Runtime gets), converts it with
    ``openvino.convert_model`` and writes the IR with fp32 weights (``compress_to_fp16=False``).
    ``load`` compiles it for the CPU plugin with ``threads`` inference threads, one stream and the
    latency hint, and f32 inference precision: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise
    run float layers in bf16 by default, which changes accuracy. The IR has a dynamic batch axis;
    the predictor compiles a static-shape copy per input shape it meets (batch 1 for latency,
    the evaluation batch and its remainder for accuracy), which is what OpenVINO runs fastest.
    No model cache is written (nothing under ``~``).
    """

    name = "openvino"
    suffix = ".xml"
    _shapes_kept = 4

    def missing(self):
        return missing_runtime_package(self.name)

    def save(self, model, example, path):
        import openvino as ov

        path = Path(path)
        onnx_path = path.with_name(path.stem + ".export.onnx")
        try:
            export_onnx(model, example, onnx_path)
            with quiet():
                ov_model = ov.convert_model(str(onnx_path))
        finally:
            onnx_path.unlink(missing_ok=True)
        return save_openvino_ir(ov_model, path, "fp32")

    def load(self, artefact, *, threads, device="cpu"):
        if device != "cpu":
            raise UserError(f"device.type: the openvino runtime runs on cpu here, not {device}")
        xml = Path(artefact.path)
        bins = [Path(f) for f in artefact.extra_files if Path(f).suffix == ".bin"]
        predict_array = openvino_predictor(str(xml), str(bins[0] if bins else xml.with_suffix(".bin")), threads=threads,
                                           shapes_kept=self._shapes_kept)

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(predict_array(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)))

        return predict


def save_openvino_ir(ov_model, path: Path, precision: str) -> Artefact:
    """Writes an ``openvino.Model`` as ``path`` (``.xml``) + its ``.bin``, weights kept as they are."""
    import openvino as ov

    path = Path(path).with_suffix(".xml")
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return Artefact(path, OpenVinoRuntime.name, precision, extra_files=[path.with_suffix(".bin")])


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (OnnxRuntime(), TorchRuntime(), OpenVinoRuntime())}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``.

    Raises:
        UserError: Unknown runtime (the message lists the known ones), or its package is not
            installed (the message names what to install).
    """
    if name not in RUNTIMES:
        raise UserError(f"device.runtime: unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    problem = RUNTIMES[name].missing()
    if problem:
        raise UserError(problem)
    return RUNTIMES[name]


@contextlib.contextmanager
def quiet():
    """Silences exporter chatter (progress lines, warnings) that users did not ask for."""
    sink = io.StringIO()
    level = logging.root.level
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(level)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Exports a float module to one self-contained ONNX file with a dynamic batch axis.

    The TorchScript exporter goes first: it takes about 0.3 s for a ResNet-18 where the
    ``torch.export``-based one takes 2-4 s, and a search pays for an export in every trial (twice
    with a structure probe). A module it cannot export, or a torch that no longer has it (it is
    deprecated), goes through the ``torch.export``-based exporter. Both write the same operators
    with BatchNorm folded, and ONNX Runtime runs either.
    """
    model = model.eval().cpu()
    path = Path(path)
    example = _batch_of_two(example)
    with torch.no_grad(), quiet():
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception:  # noqa: BLE001 - any failure of the fast path falls back to the maintained exporter
            path.unlink(missing_ok=True)
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              opset_version=opset, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), verbose=False)
    if not path.exists():
        raise RuntimeError(f"ONNX export wrote nothing at {path}")
    return path


def store_sparse_initializers(path: Path, min_elements: int = 4096) -> int:
    """Rewrites mostly-zero float initializers of an ONNX file as ``sparse_initializer`` entries.

    Unstructured pruning zeroes weights but dense files store the zeros. A sparse initializer
    keeps the non-zero values and their flat int64 positions (the ONNX checker only accepts
    int64 indices), so 12 bytes per non-zero instead of 4 per element: a tensor is converted only
    where that is smaller, i.e. above about 67% zeros. ONNX Runtime densifies sparse initializers
    when it loads the model, so outputs and latency are those of the dense file. The file is only
    rewritten when something was converted.

    Returns:
        The number of initializers converted.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    keep, sparse = [], []
    for init in graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and init.name not in inputs:
            values = numpy_helper.to_array(init)
            flat = values.reshape(-1)
            nonzero = np.flatnonzero(flat)
            if flat.size >= min_elements and nonzero.size * (values.itemsize + 8) + 64 < flat.size * values.itemsize:
                sparse.append(onnx.helper.make_sparse_tensor(
                    numpy_helper.from_array(flat[nonzero], init.name),
                    numpy_helper.from_array(nonzero.astype(np.int64), f"{init.name}__indices"), list(values.shape)))
                continue
        keep.append(init)
    if sparse:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph.sparse_initializer.extend(sparse)
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)  # a kill mid-write leaves the dense file, not a torn one
    return len(sparse)


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    # A batch of one lets the tracer specialise the batch axis to a constant.
    example = example.detach().cpu()
    return example[:1].expand(2, *example.shape[1:]).contiguous()
