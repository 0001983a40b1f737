"""Runtime sessions without torch: how an artefact is loaded and run, in the search and on an agent.

:mod:`autocompress.measure.runtimes` wraps these predictors for torch tensors; ``autocompress agent``
runs them on the target device as they are, so an artefact is configured the same way
(threads, graph optimisation, OpenVINO hints) wherever it is timed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

NumpyPredictor = Callable[[np.ndarray], np.ndarray]


def onnx_session(model: str | bytes, *, threads: int, device: str = "cpu"):
    """An ONNX Runtime session with ``threads`` intra-op threads, one inter-op thread, sequential
    execution and every graph optimisation.

    Args:
        model: A file path, or the model's bytes (then external data files cannot be referenced).
        threads: Intra-op threads.
        device: ``cuda`` puts the CUDA provider first where ONNX Runtime has it.
    """
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
    return ort.InferenceSession(model, options, providers=providers)


def onnx_predictor(session) -> NumpyPredictor:
    """``float32 array -> first output`` of an ONNX Runtime session."""
    input_name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return predict


def openvino_predictor(model: str | bytes, weights: str | bytes, *, threads: int, shapes_kept: int = 4) -> NumpyPredictor:
    """An OpenVINO IR compiled for the CPU plugin with ``threads`` inference threads, one stream,
    the latency hint and f32 inference precision; a static-shape copy is compiled per input shape.

    Args:
        model: The ``.xml`` path, or its bytes.
        weights: The ``.bin`` path, or its bytes.
        threads: Inference threads.
        shapes_kept: Compiled shapes kept at once (the oldest is dropped).
    """
    import openvino as ov

    core = ov.Core()
    if isinstance(model, bytes):
        ir = core.read_model(model.decode("utf-8"), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    else:
        ir = core.read_model(str(model), str(weights))
    properties = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": "f32"}
    requests: dict[tuple[int, ...], object] = {}

    def request_for(shape: tuple[int, ...]):
        req = requests.get(shape)
        if req is None:
            if len(requests) >= shapes_kept:
                requests.pop(next(iter(requests)))
            static = ir.clone()
            static.reshape({static.inputs[0]: ov.PartialShape(list(shape))})
            req = requests[shape] = core.compile_model(static, "CPU", properties).create_infer_request()
        return req

    def predict(x: np.ndarray) -> np.ndarray:
        req = request_for(tuple(x.shape))
        req.infer({0: x})
        return req.get_output_tensor(0).data.copy()

    return predict
