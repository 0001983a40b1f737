"""autocompress: search pruning, distillation and quantization of timm models, measured on the device."""

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext

__all__ = ["Artefact", "Plugin", "PluginConfig", "Stage", "TrialContext"]
__version__ = "0.1.0"
