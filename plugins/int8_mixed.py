"""Mixed precision for ONNX Runtime: each of five model stages is int8 (static QDQ) or float."""

from __future__ import annotations

from typing import Literal

import onnx
import torch
from pydantic import Field

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.plugin.helpers import export_onnx, quantize_onnx_static

STAGES = 5
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
Precision = Literal["int8", "float"]


class Int8Mixed(Plugin):
    """Static int8 quantization (as ``int8_static``) with some stages of the model left in float.

    The model is split into five consecutive groups, ``stage0`` (stem and first stage) to
    ``stage4`` (last stage and the classifier), from timm's ``feature_info``: a model with
    N feature stages maps stage k to group ``round(4 k / (N - 1))`` (ResNet, EfficientNet and
    MobileNetV3 have 5 stages, one per group; ConvNeXt has 4, so ``stage2`` is empty; a
    ViT's blocks are spread over the five groups). Every ONNX node is assigned to the stage
    of the module it was exported from (the exporter keeps the module path in each node's
    ``pkg.torch.onnx.name_scopes`` metadata; nodes without it inherit their predecessor's
    stage). Nodes of the float stages go to ``nodes_to_exclude``, so their weights stay fp32
    and ONNX Runtime runs them with float kernels; the int8 stages run integer kernels.

    A model without ``feature_info`` is split by the order of its Conv/Gemm/MatMul nodes into
    five equal parts.

    Attributes of ``Config``:
        stage0 .. stage4: ``int8`` or ``float`` for each group.
        calibration, calibration_batches, per_channel: as ``int8_static``.
    """

    name = "int8_mixed"
    stage = Stage.QUANTIZE
    runtimes = frozenset({"onnxruntime"})

    class Config(PluginConfig):
        stage0: Precision = "int8"
        stage1: Precision = "int8"
        stage2: Precision = "int8"
        stage3: Precision = "int8"
        stage4: Precision = "int8"
        calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
        calibration_batches: int = Field(default=8, ge=1, le=1024)
        per_channel: bool = True

    search_space = {f"stage{i}": ["int8", "float"] for i in range(STAGES)}
    probe_ignores = frozenset({"calibration", "calibration_batches"})
    stronger = {**{f"stage{i}": ["int8", "float"] for i in range(STAGES)},
                "calibration": "any", "calibration_batches": "any", "per_channel": "any"}

    def apply(self, model: torch.nn.Module, ctx: TrialContext) -> Artefact:
        """Exports ``model``, maps its nodes to stages and quantizes the int8 stages.

        Returns:
            An ``onnxruntime`` artefact of precision ``int8`` (all stages int8), ``fp32``
            (none) or ``mixed``.
        """
        cfg = self.config
        choice = [getattr(cfg, f"stage{i}") for i in range(STAGES)]
        float_path = export_onnx(model, ctx.example_input, ctx.workdir / "float.onnx")
        if all(c == "float" for c in choice):
            return Artefact(float_path, "onnxruntime", "fp32")
        stages = node_stages(onnx.load(str(float_path)).graph, model)
        float_stages = {i for i, c in enumerate(choice) if c == "float"}

        def exclude(prepared_graph):
            return [n for n, s in _propagate(prepared_graph, stages).items() if s in float_stages]

        out = quantize_onnx_static(
            float_path, ctx, ctx.workdir / "model.int8.onnx", calibration=cfg.calibration,
            calibration_batches=cfg.calibration_batches, per_channel=cfg.per_channel, exclude=exclude)
        float_path.unlink(missing_ok=True)
        return Artefact(out, "onnxruntime", "mixed" if float_stages else "int8")


def module_stages(model: torch.nn.Module, groups: int = STAGES) -> dict[str, int] | None:
    """Maps each module path of a timm model to a group ``0..groups-1`` by its ``feature_info``.

    Modules up to and including ``feature_info[k]``'s module (in definition order) belong to
    feature stage k; modules after the last (norm, head) to the last. Returns ``None`` when the
    model has no ``feature_info``.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        return None
    bounds = [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
    names = [n for n, _ in model.named_modules() if n]
    last = {}  # feature module -> index of its last descendant in definition order
    for i, n in enumerate(names):
        for b in bounds:
            if n == b or n.startswith(b + "."):
                last[b] = i
    ends = [last.get(b, -1) for b in bounds]
    count = len(bounds)
    out = {}
    for i, n in enumerate(names):
        k = next((k for k, end in enumerate(ends) if i <= end), count - 1)
        out[n] = round(k * (groups - 1) / (count - 1)) if count > 1 else 0
    return out


def node_stages(graph: onnx.GraphProto, model: torch.nn.Module, groups: int = STAGES) -> dict[str, int]:
    """Maps the node names of a freshly exported ONNX graph to groups ``0..groups-1``."""
    modules = module_stages(model, groups)
    out: dict[str, int] = {}
    if modules is not None:
        current = 0
        for node in graph.node:
            scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
            if scopes:
                known = [modules[s] for s in _parse_scopes(scopes) if s in modules]
                if known:
                    current = known[-1]
            out[node.name] = current
        if len(set(out.values())) > 1:
            return out
    # Fallback: equal shares of the compute nodes, in graph order.
    compute = [n.name for n in graph.node if n.op_type in {"Conv", "Gemm", "MatMul"}]
    share = {name: min(groups - 1, i * groups // max(1, len(compute))) for i, name in enumerate(compute)}
    current = 0
    for node in graph.node:
        current = share.get(node.name, current)
        out[node.name] = current
    return out


def _parse_scopes(value: str) -> list[str]:
    import ast

    try:
        scopes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes if isinstance(s, str)]


def _propagate(graph: onnx.GraphProto, stages: dict[str, int]) -> dict[str, int]:
    """Stages of the nodes of a (pre-processed) graph: known names keep theirs, new nodes inherit."""
    out, current = {}, 0
    for node in graph.node:
        current = stages.get(node.name, current)
        out[node.name] = current
    return out
