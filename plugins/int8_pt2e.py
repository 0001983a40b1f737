"""Static int8 post-training quantization for the ``torch`` runtime (PT2E, x86 inductor int8 kernels)."""

from __future__ import annotations

import torch
from pydantic import Field

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import quiet


class Int8PT2E(Plugin):
    """Int8 weights (per channel) and uint8 activations for the ``torch`` runtime, via PT2E.

    The model is captured with ``torch.export``; torchao's ``X86InductorQuantizer`` annotates
    it (per-channel symmetric int8 weights, per-tensor uint8 activations, or dynamically
    quantized activations with ``dynamic``), ``prepare_pt2e`` inserts observers, training
    batches calibrate them, and ``convert_pt2e`` stores the weights as int8 tensors followed
    by dequantize ops. The fp32 weights the converted module still carries but no longer
    uses (and the folded BatchNorm parameters) are removed before the program is exported
    again and saved as a ``.pt2`` file, so the file holds int8 weights: about 4x smaller
    than the fp32 program.

    Eager PyTorch would run such a program as dequantize + float kernels, which is slower
    than fp32. The ``torch`` runtime therefore loads artefacts whose precision is not
    ``fp32`` with ``torch.compile`` (inductor, weight freezing), which fuses the
    quantize/dequantize patterns into oneDNN int8 convolution and linear kernels. The first
    call for an input shape compiles (seconds to a minute; inductor's cache lives under the
    system temp folder), later calls are fast. LayerNorm, GELU and softmax stay float.

    Attributes of ``Config``:
        calibration_batches: Training batches used for calibration.
        dynamic: Quantize activations per call from their own range (no calibration;
            suits Linear-heavy models) instead of calibrated static ranges.
    """

    name = "int8_pt2e"
    stage = Stage.QUANTIZE
    runtimes = frozenset({"torch"})

    class Config(PluginConfig):
        calibration_batches: int = Field(default=8, ge=1, le=1024)
        dynamic: bool = False

    search_space = {
        "calibration_batches": {"low": 2, "high": 16, "step": 2},
    }
    probe_ignores = frozenset({"calibration_batches"})
    stronger = {"calibration_batches": "any", "dynamic": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Quantizes ``model`` with PT2E and saves it as an int8 ``torch.export`` program.

        Returns:
            A ``torch`` artefact of precision ``int8``.
        """
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        cfg = self.config
        model = model.eval().cpu()
        example = _batch_of_two(ctx.example_input)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with quiet():
            captured = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=cfg.dynamic))
            prepared = prepare_pt2e(captured, quantizer)
            with torch.no_grad():
                for x in ctx.calibration_inputs(cfg.calibration_batches):
                    prepared(x)
            converted = convert_pt2e(prepared)
            strip_unused_tensors(converted)
            program = torch.export.export(converted, (example,), dynamic_shapes=({0: batch},))
        out = ctx.workdir / "model.int8.pt2"
        torch.export.save(program, str(out))
        return Artefact(out, "torch", "int8")


def strip_unused_tensors(module: torch.fx.GraphModule) -> int:
    """Deletes parameters and buffers that no ``get_attr`` node of the graph reads.

    ``convert_pt2e`` keeps the original fp32 weights (and folded BatchNorm tensors) as
    attributes beside the int8 constants it uses; exporting the module as is would save both.

    Returns:
        How many tensors were removed.
    """
    used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    removed = 0
    for name, _ in [*module.named_parameters(), *module.named_buffers()]:
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        delattr(owner, attr)
        removed += 1
    return removed


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    # A batch of one lets the tracer specialise the batch axis to a constant.
    example = example.detach().cpu()
    return example[:1].expand(2, *example.shape[1:]).contiguous()
