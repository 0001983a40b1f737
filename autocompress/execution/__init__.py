"""Execution: runs trial specs in this process or on Ray workers and hands back their records."""

from __future__ import annotations

from autocompress.execution.executors import Executor, InProcessExecutor

__all__ = ["Executor", "InProcessExecutor", "make_executor"]


def make_executor(config, run_dir) -> Executor:
    """The executor named by ``config.search.executor`` (Ray is imported only when chosen)."""
    s = config.search
    if s.executor == "ray":
        from autocompress.execution.ray import RayExecutor  # Ray is imported only when chosen

        return RayExecutor(address=s.ray_address, workers=s.workers,
                           cpus_per_trial=s.cpus_per_trial if s.cpus_per_trial is not None else config.device.threads,
                           gpus_per_trial=s.gpus_per_trial, run_dir=run_dir)
    return InProcessExecutor()
