"""The target-device side, importable without torch or Ray: timing rounds, runtime sessions,
machine facts, the agent's wire protocol, its server and its client.

Names are imported on first use (PEP 562): ``autocompress-agent`` runs with numpy and a runtime only.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "main": "agent",
    "AgentError": "client",
    "agent_token": "client",
    "check_agents": "client",
    "measure_on_agents": "client",
    "describe": "machine",
    "canonical_url": "protocol",
    "onnx_predictor": "sessions",
    "onnx_session": "sessions",
    "openvino_predictor": "sessions",
    "Latency": "timing",
    "paired_ratio": "timing",
    "time_interleaved": "timing",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"autocompress.device.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autocompress.device' has no attribute {name!r}")
