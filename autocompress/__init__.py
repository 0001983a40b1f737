"""autocompress: search pruning, distillation and quantization of timm models, measured on the device.

The public names are imported on first use (PEP 562), so ``import autocompress.device.agent`` on a
target device needs neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Artefact": "autocompress.plugin", "Plugin": "autocompress.plugin", "PluginConfig": "autocompress.plugin",
    "Stage": "autocompress.plugin", "TrialContext": "autocompress.plugin",
    "LoadedModel": "autocompress.results", "load": "autocompress.results",
}

__all__ = ["Artefact", "LoadedModel", "Plugin", "PluginConfig", "Stage", "TrialContext", "load"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
