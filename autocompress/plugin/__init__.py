"""The plugin contract: what a plugin file imports, with :mod:`autocompress.plugin.helpers` (see docs/plugins.md)."""

from __future__ import annotations

from autocompress.plugin.contract import (
                                          DIRECTIONS,
                                          NONE,
                                          STAGE_ORDER,
                                          Artefact,
                                          Plugin,
                                          PluginConfig,
                                          Stage,
                                          TrialContext,
                                          curve_sample_size,
                                          strongest_value,
)
from autocompress.plugin.registry import Registry, discover, shipped_plugins_dir
from autocompress.plugin.space import check_plugin_space, describe_spec, normalise_spec
from autocompress.plugin.teacher import TeacherOutputs

__all__ = ['Artefact', 'DIRECTIONS', 'NONE', 'Plugin', 'PluginConfig', 'Registry', 'STAGE_ORDER', 'Stage', 'TeacherOutputs', 'TrialContext', 'check_plugin_space', 'curve_sample_size', 'describe_spec', 'discover', 'normalise_spec', 'shipped_plugins_dir', 'strongest_value']
