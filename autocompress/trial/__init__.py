"""One trial: the pipeline of steps from a plain spec to a typed record, with its memo."""

from __future__ import annotations

from autocompress.trial.base import prepare_base
from autocompress.trial.pipeline import AGENT_NO_ENERGY, TrialSpec, run_trial, trial_dir
from autocompress.trial.watchdog import STEP_FILE, StepTimeout, log_to, read_step_file

__all__ = ['AGENT_NO_ENERGY', 'STEP_FILE', 'StepTimeout', 'TrialSpec', 'log_to', 'prepare_base', 'read_step_file', 'run_trial', 'trial_dir']
