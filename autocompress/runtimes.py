"""Deploy runtimes: how a float module is saved for one, and how an artefact is loaded and run.

A runtime turns an :class:`~autocompress.plugin.Artefact` into a predictor, a callable from a
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

from autocompress.errors import UserError
from autocompress.plugin import Artefact

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


class OnnxRuntime(Runtime):
    """ONNX Runtime: artefacts are ``.onnx`` files with weights inside (no external data)."""

    name = "onnxruntime"
    suffix = ".onnx"

    def save(self, model, example, path):
        export_onnx(model, example, Path(path))
        return Artefact(Path(path), self.name, "fp32")

    def load(self, artefact, *, threads, device="cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(artefact.path), options, providers=providers)
        input_name = session.get_inputs()[0].name

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {input_name: x.detach().cpu().numpy().astype(np.float32)})[0])

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
        module = torch.export.load(str(artefact.path)).module()
        dev = torch.device(device)
        module.to(dev)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x.to(dev)).float().cpu()

        return predict


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (OnnxRuntime(), TorchRuntime())}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``.

    Raises:
        UserError: Unknown runtime; the message lists the known ones.
    """
    if name not in RUNTIMES:
        raise UserError(f"device.runtime: unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
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
    """Exports a float module to one self-contained ONNX file with a dynamic batch axis."""
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), quiet():
        torch.onnx.export(
            model, (_batch_of_two(example),), str(path), dynamo=True, external_data=False,
            opset_version=opset, input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), verbose=False,
        )
    if not Path(path).exists():
        raise RuntimeError(f"ONNX export wrote nothing at {path}")
    return Path(path)


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    # A batch of one lets the tracer specialise the batch axis to a constant.
    example = example.detach().cpu()
    return example[:1].expand(2, *example.shape[1:]).contiguous()
