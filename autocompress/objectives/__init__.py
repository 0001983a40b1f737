"""Objectives and budget: metric keys, constraints, dominance, the front and its hypervolume."""

from __future__ import annotations

from autocompress.objectives.budget import (
                                           BUDGET_METRICS,
                                           LATENCY_NOISE,
                                           STOPPED_VIOLATION,
                                           Unmet,
                                           caps_figures,
                                           constraints,
                                           fixed_verdict,
                                           is_feasible,
                                           probe_problem,
                                           proxy_verdict,
                                           refusal,
                                           required_metrics,
                                           stopped_constraints,
                                           structure_verdict,
                                           vs_base,
                                           within_budget,
)
from autocompress.objectives.front import (
                                           DEFAULT_OBJECTIVES,
                                           OBJECTIVE_KEYS,
                                           OBJECTIVES,
                                           TIMED,
                                           directions,
                                           dominates,
                                           front,
                                           has_objectives,
                                           hypervolume,
                                           latency_ratio,
                                           metric_keys,
                                           objective_values,
)

__all__ = ['BUDGET_METRICS', 'DEFAULT_OBJECTIVES', 'LATENCY_NOISE', 'OBJECTIVES', 'OBJECTIVE_KEYS', 'STOPPED_VIOLATION', 'TIMED', 'Unmet', 'caps_figures', 'constraints', 'directions', 'dominates', 'fixed_verdict', 'front', 'has_objectives', 'hypervolume', 'is_feasible', 'latency_ratio', 'metric_keys', 'objective_values', 'probe_problem', 'proxy_verdict', 'refusal', 'required_metrics', 'stopped_constraints', 'structure_verdict', 'vs_base', 'within_budget']
