"""What a plugin may use besides the contract: training, distillation, export and quantization,
and the fix-ups structured pruning needs.

A plugin file imports :mod:`autocompress.plugin` (the contract) and this module, nothing else of
autocompress (the contract suite checks it, see :class:`autocompress.plugin.testing.PluginContract`)::

    from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
    from autocompress.plugin.helpers import fit, kd_loss, static_int8

Everything here is plain torch / ONNX Runtime work on the trial's own data: nothing is mocked and
nothing reaches outside the trial's work folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from autocompress.config import ModelConfig
from autocompress.measure import count_params, export_onnx, quiet, save_openvino_ir
from autocompress.models import create_model, model_stages
from autocompress.models import fit as _fit
from autocompress.plugin.contract import Artefact, TrialContext
from autocompress.plugin.teacher import kd_loss

__all__ = [
    "ALWAYS_FLOAT_OPS", "COMPUTE_OPS", "classifier_layers", "count_params", "create_student", "export_onnx", "fit",
    "first_last_compute", "fused_attentions", "kd_loss", "model_stages", "quantize_onnx_static", "quiet", "resize_attentions",
    "save_openvino_ir", "static_int8",
]

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
"""ONNX ops whose weights static int8 quantizes in ``ops="compute"`` mode."""
ALWAYS_FLOAT_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "BatchNormalization"})
"""ONNX ops left float: ORT has no integer kernel for them, so quantizing around them only adds rounding error."""

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# -- training -------------------------------------------------------------------------------------

def fit(model: torch.nn.Module, ctx: TrialContext, *, epochs: float, lr: float, loss_fn: LossFn | None = None,
        on_epoch: Callable[[int, torch.nn.Module], object] | None = None, weight_decay: float = 0.05,
        seed: int | None = None) -> torch.nn.Module:
    """Fine-tunes ``model`` on the trial's training split (AdamW, one-cycle schedule).

    A plugin that calls this must declare ``fine_tunes = True``, skip it when ``ctx.structure_only``
    and pass ``on_epoch=ctx.epoch_reporter(epochs)`` (or a callback that calls it) so its curve is
    reported; the contract suite fails a plugin that trains without declaring it.

    Args:
        model: Trained in place and returned (on ``ctx.device``).
        ctx: The trial: its data, seed, batch size and device are used.
        epochs: Epochs; a fraction trains on that share of one epoch.
        lr: Peak learning rate.
        loss_fn: ``loss_fn(logits, labels, inputs)``, e.g. :func:`kd_loss`; default cross-entropy.
        on_epoch: Called after each epoch with its index and the model.
        weight_decay: AdamW weight decay.
        seed: Seed of the shuffling and augmentation; default ``ctx.seed`` (every trial sees the same batches).

    At a rung of the search's fidelity ladder (``ctx.rung``) the schedule is warmup-stable-decay
    over the rung's epochs, continued from the previous rung's saved state when there is one.

    Raises:
        TimeUp: ``ctx.deadline`` passed; the fine-tune was saved where it was and continues on
            ``--resume`` (let it propagate).
    """
    return _fit(model, ctx.data, epochs=epochs, lr=lr, seed=ctx.seed if seed is None else seed,
                batch_size=ctx.batch_size, device=ctx.device, weight_decay=weight_decay, loss_fn=loss_fn,
                on_epoch=on_epoch, deadline=ctx.deadline,
                checkpoint=ctx.fit_checkpoint() if ctx.fit_checkpoint is not None else None,
                rung=ctx.rung() if ctx.rung is not None else None)


def create_student(name: str, *, num_classes: int, img_size: int, pretrained: bool = False) -> torch.nn.Module:
    """A new timm model ``name`` with ``num_classes`` outputs at ``img_size`` (random weights unless ``pretrained``).

    Raises:
        UserError: ``name`` is not a timm model, or its pretrained weights cannot be fetched.
    """
    return create_model(ModelConfig(name=name, img_size=img_size, pretrained=pretrained, train_epochs=0), num_classes)


# -- structured pruning ---------------------------------------------------------------------------

def fused_attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Multi-head attentions with a fused ``qkv`` linear (timm ``Attention`` and its kin), in module order."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "qkv", None), torch.nn.Linear) and isinstance(getattr(m, "num_heads", None), int)]


def resize_attentions(attentions: Iterable[torch.nn.Module],
                      num_heads: Mapping[torch.nn.Module, int] | None = None) -> None:
    """Rewrites the sizes each attention derives from its ``qkv`` after channels were pruned.

    timm's ``Attention`` keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` as plain
    attributes; after a pruner shrinks ``qkv`` and ``proj`` they must match the new width again.

    Args:
        attentions: From :func:`fused_attentions`, taken before pruning.
        num_heads: New head count per ``qkv`` layer where heads were removed (torch-pruning's
            ``pruner.num_heads``); others keep theirs.

    Raises:
        RuntimeError: A pruned width is not a multiple of the head count.
    """
    for attn in attentions:
        heads = (num_heads or {}).get(attn.qkv, attn.num_heads)
        width = attn.qkv.out_features // 3
        if heads < 1 or width % heads:
            raise RuntimeError(f"pruned attention has qkv width {width} for {heads} heads")
        attn.num_heads = heads
        attn.head_dim = width // heads
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = width
        if hasattr(attn, "scale"):
            # fused attention (scaled_dot_product_attention) scales by the new head width; the
            # unfused path uses ``scale``: keep both paths identical
            attn.scale = attn.head_dim ** -0.5


def classifier_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The classifier (``get_classifier()``, else the last Linear/Conv2d): layers a pruner must leave whole."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, torch.nn.Module) and not isinstance(head, torch.nn.Identity):
        return [head]
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]


# -- ONNX Runtime static int8 ---------------------------------------------------------------------

def static_int8(model: torch.nn.Module, ctx: TrialContext, *, calibration_batches: int = 8,
                **options) -> Artefact:
    """Exports ``model`` to ONNX and quantizes it to static QDQ int8 for ONNX Runtime.

    Calibrates on ``calibration_batches`` training batches (one in a structure probe, see
    :meth:`TrialContext.calibration_size`). ``options`` are those of :func:`quantize_onnx_static`.

    Returns:
        An ``onnxruntime`` artefact of precision ``int8`` in ``ctx.workdir``.
    """
    float_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
    out = quantize_onnx_static(float_path, ctx, ctx.workdir / "model.int8.onnx",
                               calibration_batches=calibration_batches, **options)
    float_path.unlink(missing_ok=True)
    return Artefact(out, "onnxruntime", "int8")


def quantize_onnx_static(
    float_path: Path, ctx: TrialContext, out: Path, *, calibration: str = "minmax", percentile: float = 99.999,
    calibration_batches: int = 8, per_channel: bool = True,
    exclude: Callable[[object], Iterable[str]] | None = None, ops: str = "all",
    weight_symmetric: bool = True, activation_symmetric: bool = False, moving_average: bool = False,
) -> Path:
    """Calibrates and quantizes a float ONNX file into a QDQ int8 ONNX file (int8 weights, uint8 activations).

    Args:
        float_path: The float model, as written by :func:`export_onnx`.
        ctx: Its training split gives the calibration batches (fewer in a structure probe).
        out: Where to write the quantized model.
        calibration: ``minmax``, ``percentile`` (clips outliers) or ``entropy`` (KL divergence).
        percentile: Percentile kept by ``percentile`` calibration.
        calibration_batches: Training batches calibrated on.
        per_channel: One weight scale per output channel.
        exclude: ``exclude(prepared_graph) -> node names`` to keep float, or ``None``.
        ops: ``all`` quantizes every op ORT can; ``compute`` only Conv/Gemm/MatMul.
        weight_symmetric: Symmetric weight ranges.
        activation_symmetric: Symmetric activation ranges.
        moving_average: Moving average of per-batch min/max (``minmax`` only).

    Returns:
        ``out``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(out).with_name(Path(out).stem + ".prepared.onnx")
    with quiet():
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    batches = [x.numpy() for x in ctx.calibration_inputs(calibration_batches)]
    # ORT's histogram calibrators (percentile, entropy) stack the batches: keep equal sizes only
    batches = [b for b in batches if b.shape[0] == batches[0].shape[0]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"input": batch.astype(np.float32)}

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    extra: dict = {"WeightSymmetric": weight_symmetric, "ActivationSymmetric": activation_symmetric}
    if calibration == "percentile":
        extra["CalibPercentile"] = percentile
    if calibration == "minmax" and moving_average:
        extra["CalibMovingAverage"] = True
    op_types = COMPUTE_OPS if ops == "compute" else sorted(set(QDQRegistry) - ALWAYS_FLOAT_OPS)
    nodes_to_exclude = list(exclude(onnx.load(str(prepared)).graph)) if exclude is not None else []
    with quiet():
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            op_types_to_quantize=list(op_types), nodes_to_exclude=nodes_to_exclude, extra_options=extra,
        )
    prepared.unlink(missing_ok=True)
    for leftover in Path(out).parent.glob("augmented_model*.onnx"):
        leftover.unlink(missing_ok=True)
    return Path(out)


def first_last_compute(graph) -> list[str]:
    """Names of the first and the last Conv/Gemm/MatMul node of an ONNX graph (an ``exclude`` for
    :func:`quantize_onnx_static` that keeps them float)."""
    compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS]
    return [compute[0], compute[-1]] if len(compute) >= 2 else compute
