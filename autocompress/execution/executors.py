"""Executors run trial specs and hand back their records; the controller never runs a trial itself,
nor the base's measurement or the budget probe: they run where trials run (:meth:`Executor.run`)."""

from __future__ import annotations

import abc
import os

from autocompress.trial import TrialRecord, TrialSpec, run_trial


class Executor(abc.ABC):
    """Runs trials, up to ``slots`` at a time."""

    slots: int = 1

    @abc.abstractmethod
    def submit(self, spec: TrialSpec) -> None:
        """Starts a trial."""

    @abc.abstractmethod
    def run(self, spec: TrialSpec) -> TrialRecord:
        """Runs one spec to its end, outside the queue of trials, where trials run; returns its record.

        The base's measurement (trial -1) and the budget probe (trial -2) come this way, so on Ray
        they are measured on a worker, under the same measurement slot as the trials.
        """

    @abc.abstractmethod
    def poll(self, timeout: float | None = None) -> list[TrialRecord]:
        """Records of trials finished since the last poll (waits up to ``timeout`` for one)."""

    @abc.abstractmethod
    def running(self) -> int:
        """Trials started and not yet returned by :meth:`poll`."""

    def cancel_all(self) -> list[int]:
        """Stops running trials where possible; returns their numbers."""
        return []

    def shutdown(self) -> None:
        """Releases resources."""


class InProcessExecutor(Executor):
    """Runs each trial in this process, one at a time, when it is submitted."""

    slots = 1

    def __init__(self) -> None:
        self._done: list[TrialRecord] = []

    def run(self, spec: TrialSpec) -> TrialRecord:
        record = run_trial(spec)
        # where the figures came from, with the same fields as a Ray record
        return record.set_execution(node_id=None, worker_pid=os.getpid(), measure_slot="in-process",
                                    measure_wait_s=0.0 if record.state == "complete" else None, attempts=1)

    def submit(self, spec: TrialSpec) -> None:
        self._done.append(self.run(spec))

    def poll(self, timeout: float | None = None) -> list[dict]:
        done, self._done = self._done, []
        return done

    def running(self) -> int:
        return len(self._done)
