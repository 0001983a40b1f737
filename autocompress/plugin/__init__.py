"""The plugin contract: what a plugin file imports (see docs/plugins.md)."""

from __future__ import annotations

from autocompress.plugin.contract import (NONE, STAGE_ORDER, Artefact, Plugin, PluginConfig, Stage, TrialContext,
                                         curve_sample_size)
from autocompress.plugin.registry import Registry, discover
from autocompress.plugin.space import check_plugin_space, describe_spec, normalise_spec
from autocompress.plugin.teacher import TeacherOutputs

__all__ = ['Artefact', 'NONE', 'Plugin', 'PluginConfig', 'Registry', 'STAGE_ORDER', 'Stage', 'TeacherOutputs', 'TrialContext', 'check_plugin_space', 'curve_sample_size', 'describe_spec', 'discover', 'normalise_spec']
