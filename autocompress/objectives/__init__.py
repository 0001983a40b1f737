"""Objectives and budget: metric keys, constraints, dominance, the front and its hypervolume."""

from __future__ import annotations

from autocompress.objectives.front import BUDGET_METRICS, DEFAULT_OBJECTIVES, OBJECTIVES, OBJECTIVE_KEYS, TIMED, constraints, directions, dominates, front, has_objectives, hypervolume, metric_keys, objective_values, required_metrics

__all__ = ['BUDGET_METRICS', 'DEFAULT_OBJECTIVES', 'OBJECTIVES', 'OBJECTIVE_KEYS', 'TIMED', 'constraints', 'directions', 'dominates', 'front', 'has_objectives', 'hypervolume', 'metric_keys', 'objective_values', 'required_metrics']
