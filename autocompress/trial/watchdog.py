"""Time limits and heartbeats of a trial's steps (``search.step_timeout``).

Each plugin's ``apply`` and the export+measure step of a trial (the base, the budget probe
and structure probes included) run inside :func:`timed_step`:

* **The limit.** In the main thread (in-process trials, Ray tasks) the watchdog thread sends
  ``SIGALRM`` to that thread alone (:func:`signal.pthread_kill`; a process-wide timer would
  interrupt other threads' system calls, and not every native library's threads survive an
  ``EINTR``), whose handler raises :class:`StepTimeout` at the limit. Python runs signal
  handlers between bytecodes: a step in Python code, or blocked in ``sleep``, I/O or a
  lock, stops at once; a hang inside *one* native call (a C++ loop in a library) stops only
  when that call returns to Python. In another thread (or when someone else already armed
  ``SIGALRM``, e.g. pytest-timeout) a watchdog thread raises it in the step's thread
  instead (``PyThreadState_SetAsyncExc``): the same, except that a blocking call such as
  ``sleep`` is not woken. Either way a step that ran past its limit is failed when it
  returns, even if a plugin swallowed the exception (a bare ``except``).
* **Ray.** A Ray worker can be killed: the executor reads the step file each step writes
  (``RUN/trials/NNNN/.step.json``) and force-cancels a trial whose step is still running a
  grace period after its limit (:meth:`autocompress.execution.ray.RayExecutor`), a native
  hang included.
* **Heartbeat.** Every :data:`HEARTBEAT_S` seconds a running step says what it is doing
  (``trial 3: prune channel_prune running 2m``): through :func:`log_to`'s sink (the
  controller's log and display, in-process), else appended to ``RUN/run.log`` (Ray workers).

:class:`StepTimeout` derives from ``BaseException`` so that a plugin's ``except Exception``
(torch-pruning, exporters) does not swallow it; :func:`autocompress.trial.pipeline.run_trial` catches
it and records the trial failed with :attr:`StepTimeout.reason`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

HEARTBEAT_S = 60.0
"""Seconds between two 'still running' lines of one step."""
STEP_FILE = ".step.json"
"""Written in a trial's folder while one of its steps runs: ``label``, ``step``, ``started``, ``limit``, ``host``, ``pid``."""
FIELD = "search.step_timeout"

_sink: Callable[[str], None] | None = None


class StepTimeout(BaseException):
    """A trial step ran past ``search.step_timeout``.

    Attributes:
        step: What ran, e.g. ``prune channel_prune`` or ``export+measure (onnxruntime, after quantize int8_static)``.
        limit: The limit in seconds.
    """

    def __init__(self, step: str = "", limit: float | None = None, note: str = "") -> None:
        self.step, self.limit, self.note = step, limit, note
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        if not self.step:
            return f"step timeout ({FIELD})"
        return f"step timeout: {self.step} ran past {format_duration(self.limit)} ({FIELD}){self.note}"

    def to_dict(self) -> dict:
        return {"step": self.step, "limit_s": self.limit}


def format_duration(seconds: float | None) -> str:
    """``1200`` -> ``20m``, ``3600`` -> ``1h``, ``1.5`` -> ``1.5s`` (what ``parse_duration`` reads back)."""
    if seconds is None:
        return "none"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _elapsed(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@contextlib.contextmanager
def log_to(sink: Callable[[str], None] | None) -> Iterator[None]:
    """Sends heartbeat lines of steps run in this process to ``sink`` while inside."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


def _emit(line: str, log_file: Path | None) -> None:
    try:
        if _sink is not None:
            _sink(line)
        elif log_file is not None and log_file.parent.is_dir():
            with open(log_file, "a") as fh:
                fh.write(f"{dt.datetime.now():%H:%M:%S} {line}\n")
    except Exception:  # a heartbeat never breaks a trial
        pass


def read_step_file(folder: Path) -> dict | None:
    """The step running in a trial folder, or ``None``."""
    try:
        info = json.loads((Path(folder) / STEP_FILE).read_text())
        return info if isinstance(info, dict) and "step" in info else None
    except (OSError, ValueError):
        return None


def _alarm_free() -> bool:
    """Whether SIGALRM can be used here: the main thread, and nobody else's timer or handler armed."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return False
    handler = signal.getsignal(signal.SIGALRM)
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0 and handler in (signal.SIG_DFL, signal.SIG_IGN, None)


def _on_own_stack(signum: int) -> None:
    """Clears ``SA_ONSTACK`` from the handler Python installed for ``signum`` (Linux, 64-bit).

    Python installs its handlers to run on the thread's alternate signal stack. A native library
    that set one up for the main thread and later freed it (seen with a Ray driver, OpenVINO and
    NNCF loaded in one process) turns the delivery of such a signal into a SIGSEGV of the whole
    process; our handler is small and runs safely on the thread's own stack.
    """
    import sys

    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return

    class Sigaction(ctypes.Structure):  # glibc's struct sigaction on 64-bit Linux
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]

    sa_onstack = 0x08000000
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        action = Sigaction()
        if libc.sigaction(signum, None, ctypes.byref(action)) == 0 and action.flags & sa_onstack:
            action.flags &= ~sa_onstack
            libc.sigaction(signum, ctypes.byref(action), None)
    except (OSError, AttributeError):  # no libc to ask: Python's own flags stay
        pass


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


@contextlib.contextmanager
def timed_step(label: str, step: str, *, limit: float | None, folder: Path | None = None,
               log_file: Path | None = None) -> Iterator[None]:
    """Runs the body as one step of a trial: under ``limit`` seconds (``None`` = none), with a heartbeat.

    Args:
        label: Whose step: ``trial 3``, ``base``, ``budget probe``.
        step: What it is, e.g. ``prune channel_prune``; named in the heartbeat and the timeout's reason.
        limit: Seconds before :class:`StepTimeout` is raised in the step.
        folder: The trial's folder, where :data:`STEP_FILE` says what runs (for the Ray executor's
            force-cancel); ``None`` = no file.
        log_file: Where heartbeat lines go when no :func:`log_to` sink is set.

    Raises:
        StepTimeout: The step ran past ``limit``.
    """
    t0 = time.monotonic()
    state = {"active": True, "fired": False, "async": False, "signalled": False}
    lock = threading.Lock()
    stop = threading.Event()
    thread_id = threading.get_ident()
    use_alarm = bool(limit) and _alarm_free()
    step_file = Path(folder) / STEP_FILE if folder is not None else None
    if step_file is not None:
        with contextlib.suppress(OSError):
            step_file.write_text(json.dumps({"label": label, "step": step, "started": time.time(), "limit": limit,
                                             "host": socket.gethostname(), "pid": os.getpid()}))

    def on_alarm(signum, frame):
        if state["active"] and not state["fired"]:
            state["fired"] = True
            raise StepTimeout(step, limit)

    def watch() -> None:
        next_beat = HEARTBEAT_S
        while True:
            elapsed = time.monotonic() - t0
            due = [next_beat]
            if limit and not state["fired"] and not state["signalled"]:
                due.append(limit)
            if stop.wait(max(0.0, min(due) - elapsed)):
                return
            elapsed = time.monotonic() - t0
            if limit and not state["fired"] and not state["signalled"] and elapsed >= limit:
                with lock:
                    if state["active"] and use_alarm:
                        # directed at the step's thread: a process-wide alarm would interrupt any thread's
                        # system call, and native libraries' threads (Ray, gRPC, thread pools) are not all
                        # ready for EINTR
                        state["signalled"] = True
                        signal.pthread_kill(thread_id, signal.SIGALRM)
                    elif state["active"]:
                        state["fired"] = state["async"] = True
                        _raise_in(thread_id, StepTimeout)
            if elapsed >= next_beat:
                # past the limit yet still running: inside one native call, stopped when it returns to Python
                note = (f", past {FIELD} {format_duration(limit)}: stops when it returns to Python"
                        if limit and elapsed > limit else "")
                _emit(f"{label}: {step} running {_elapsed(elapsed)}{note}", log_file)
                while next_beat <= elapsed:
                    next_beat += HEARTBEAT_S

    previous = None
    try:
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, on_alarm)
            _on_own_stack(signal.SIGALRM)
        threading.Thread(target=watch, name=f"step-watchdog {label}: {step}", daemon=True).start()
        yield
        if state["fired"]:  # the step swallowed the exception, or could not be interrupted: fail it all the same
            raise StepTimeout(step, limit)
    except StepTimeout as err:
        if err.step:
            raise
        raise StepTimeout(step, limit) from None  # the watchdog's, raised without arguments
    except Exception as err:  # a plugin that wrapped the timeout in an exception of its own
        if state["fired"]:
            raise StepTimeout(step, limit) from err
        raise
    finally:
        try:  # an alarm handled at the first bytecode here still raises; the cleanup below runs regardless
            state["active"] = False
            with lock:
                if state["async"]:
                    _raise_in(thread_id, None)  # clears a timeout not yet delivered
        finally:
            stop.set()
            if use_alarm:
                with lock:  # the watchdog sends no signal after this
                    pass
                if previous in (None, signal.SIG_DFL) and signal.SIGALRM in signal.sigpending():
                    previous = signal.SIG_IGN  # an alarm still blocked (by native code) must not kill the process later
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
            if step_file is not None:
                with contextlib.suppress(OSError):
                    step_file.unlink()
