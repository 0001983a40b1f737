"""Executors run trial specs and hand back plain records; the controller never runs a trial itself."""

from __future__ import annotations

import abc
import os

from autocompress.trial import TrialSpec, run_trial


class Executor(abc.ABC):
    """Runs trials, up to ``slots`` at a time."""

    slots: int = 1

    @abc.abstractmethod
    def submit(self, spec: TrialSpec) -> None:
        """Starts a trial."""

    @abc.abstractmethod
    def poll(self, timeout: float | None = None) -> list[dict]:
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
        self._done: list[dict] = []

    def submit(self, spec: TrialSpec) -> None:
        record = run_trial(spec)
        # where the figures came from, with the same keys as a Ray record
        record.update(node_id=None, worker_pid=os.getpid(), measure_slot="in-process", attempts=1)
        record.setdefault("measure_wait_s", 0.0 if record["state"] == "complete" else None)
        self._done.append(record)

    def poll(self, timeout: float | None = None) -> list[dict]:
        done, self._done = self._done, []
        return done

    def running(self) -> int:
        return len(self._done)
