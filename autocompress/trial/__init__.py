"""One trial: the pipeline of steps from a plain spec to a typed record, with its memo."""

from __future__ import annotations

from autocompress.trial.base import prepare_base
from autocompress.trial.pipeline import AGENT_NO_ENERGY, TrialSpec, resolve_devices, run_trial, trial_dir
from autocompress.trial.record import RECORD_VERSION, Metrics, TrialRecord, read_record, read_trials
from autocompress.trial.watchdog import STEP_FILE, StepTimeout, log_to, read_step_file

__all__ = ['AGENT_NO_ENERGY', 'Metrics', 'RECORD_VERSION', 'STEP_FILE', 'StepTimeout', 'TrialRecord', 'TrialSpec', 'log_to', 'prepare_base', 'read_record', 'read_step_file', 'read_trials', 'resolve_devices', 'run_trial', 'trial_dir']
