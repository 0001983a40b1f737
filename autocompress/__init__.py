"""autocompress: search pruning, distillation and quantization of timm models, measured on the device."""

from autocompress.plugin import Artefact, Plugin, PluginConfig, Stage, TrialContext
from autocompress.api import LoadedModel, load

__all__ = ["Artefact", "LoadedModel", "Plugin", "PluginConfig", "Stage", "TrialContext", "load"]
__version__ = "0.1.0"
