"""Measurement of one model: accuracy, latency rounds on a runtime, size, footprint."""

from __future__ import annotations

from autocompress.measure.accuracy import count_params, measure_latency, module_predictor, recalibrated_top1, top1
from autocompress.measure.artefact import Artefact
from autocompress.measure.footprint import EnergyTracker, energy_meter, energy_unavailable, measure_footprint
from autocompress.measure.runtimes import RUNTIMES, export_onnx, get_runtime, quiet, save_openvino_ir

__all__ = ['Artefact', 'EnergyTracker', 'RUNTIMES', 'count_params', 'energy_meter', 'energy_unavailable', 'export_onnx', 'get_runtime', 'measure_footprint', 'measure_latency', 'module_predictor', 'quiet', 'recalibrated_top1', 'save_openvino_ir', 'top1']
