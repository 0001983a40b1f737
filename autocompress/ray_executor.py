"""Trials as Ray tasks: several at once, on one machine or a cluster.

Each trial is one Ray task that calls :func:`autocompress.trial.run_trial` on the plain
spec dict and returns the plain record, so the controller sees the same records as
in-process. What this module adds:

* **Worker death.** A task whose worker process dies (SIGKILL, the OOM killer, a segfault
  in a native library) is retried once (``max_retries=1``); if the retry dies too, the
  trial comes back as a failed record with reason ``worker died ...``. A trial's own
  exception is not retried (``retry_exceptions=False``): :func:`run_trial` already turns
  it into a failed record.
* **Fair latency.** One measurement slot per node: a small named actor
  (:class:`MeasureSlot`) pinned to each node with ``NodeAffinitySchedulingStrategy``.
  The task swaps :data:`autocompress.trial.measurement_lock` for a lock taken from its
  node's actor, so two trials never time their models at the same moment on one node.
  A holder that dies while measuring is detected (its PID is gone) and the slot freed.
  Each record says where its figures came from: ``host``, ``node_id``, ``device``,
  ``worker_pid`` and ``measure_wait_s``.
* **Plugins.** The spec carries plugin file paths; the executor also ships their source
  with each task. A worker uses the path when the same file is there (one machine, a
  shared filesystem) and otherwise writes the shipped source to a local cache folder.
* **Quiet and tidy.** A local Ray is started with the dashboard off, worker output kept
  out of the terminal (``log_to_driver=False``), its temp and log files under
  ``RUN/ray`` (or a short temp folder linked from there, because Ray's unix sockets
  need a short path), and ``ray.shutdown()`` at the end. A Ray that was already
  initialised in this process (tests, notebooks) is used and left running.

Base model and data: workers read ``base/weights.pt`` and the base artefact from the
run folder, and datasets from their configured paths. On one machine that just works;
on a cluster the run folder (and any ``data.path``) must be on a filesystem shared by
every node at the same path (NFS, a cloud filesystem mount), and autocompress must be
installed on every node.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autocompress.executors import Executor
from autocompress.trial import TrialSpec, trial_dir

SLOT_PREFIX = "autocompress-measure-"
_MAX_TEMP_DIR = 36  # Ray's socket paths add ~70 characters; unix sockets allow 107
_ENV_PASSED = ("HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "HF_DATASETS_OFFLINE")


def _measure_slot_class():
    """The actor class, built in a function so Ray ships it by value: its worker then never
    imports autocompress (and torch), and stays a small process."""
    import asyncio as _asyncio
    import contextlib as _contextlib
    import os as _os
    import time as _time

    def alive(pid: int) -> bool:
        try:
            _os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    class MeasureSlot:
        """One latency-measurement slot of a node: a lock held by a worker process.

        Async actor: waiting callers do not block the one that releases. A holder whose
        process has died (it runs on this node, so its PID can be checked) loses the slot.
        """

        def __init__(self) -> None:
            self._holder: int | None = None
            self._freed = _asyncio.Event()

        async def acquire(self, pid: int) -> float:
            """Waits until the slot is free and takes it for ``pid``; returns the seconds waited."""
            t0 = _time.perf_counter()
            while self._holder is not None and self._holder != pid and alive(self._holder):
                self._freed.clear()
                with _contextlib.suppress(_asyncio.TimeoutError):
                    await _asyncio.wait_for(self._freed.wait(), timeout=0.5)
            self._holder = pid
            return _time.perf_counter() - t0

        async def release(self, pid: int) -> None:
            if self._holder == pid:
                self._holder = None
                self._freed.set()

        async def holder(self) -> int | None:
            return self._holder

    return MeasureSlot


MeasureSlot = ray.remote(num_cpus=0)(_measure_slot_class())


@contextlib.contextmanager
def _slot_lock(slot: Any, info: dict):
    pid = os.getpid()
    held = False
    try:
        info["measure_wait_s"] = round(ray.get(slot.acquire.remote(pid)), 3)
        held = True
    except ray.exceptions.RayError as err:  # the slot actor is gone: measure anyway, and say so
        info["measure_slot"] = f"unavailable ({type(err).__name__})"
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(slot.release.remote(pid))


def _materialise(paths: list[str], sources: dict[str, str]) -> list[str]:
    """Plugin files usable on this worker: the driver's path if the same file is here, else a local copy."""
    out = []
    for path in paths:
        text = sources.get(path)
        if text is None:
            out.append(path)
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        p = Path(path)
        try:
            if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest()[:16] == digest:
                out.append(path)
                continue
        except OSError:
            pass
        local = Path(tempfile.gettempdir()) / "autocompress-plugins" / digest / p.name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, local)
        out.append(str(local))
    return out


def _trial_task(spec: dict, sources: dict[str, str]) -> dict:
    """Body of the Ray task: one trial on this worker, measured under the node's slot."""
    import autocompress.trial as trial_module
    from autocompress.trial import run_trial

    spec = dict(spec, plugin_files=_materialise(spec.get("plugin_files", []), sources))
    node_id = ray.get_runtime_context().get_node_id()
    out_dir = trial_dir(Path(spec["run_dir"]), spec["number"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f".attempt-{os.getpid()}").touch()  # counts retries across worker deaths
    info: dict[str, Any] = {"node_id": node_id, "worker_pid": os.getpid(), "measure_slot": "node",
                            "measure_wait_s": None}
    try:
        slot = ray.get_actor(SLOT_PREFIX + node_id)
    except ValueError:
        slot = None
        info["measure_slot"] = "none on this node"
    trial_module.measurement_lock = (lambda: _slot_lock(slot, info)) if slot is not None else contextlib.nullcontext
    try:
        record = run_trial(spec)
    finally:
        trial_module.measurement_lock = contextlib.nullcontext
    info["attempts"] = len(list(out_dir.glob(".attempt-*")))
    record.update(info)
    return record


_remote_trial = ray.remote(_trial_task)


class RayExecutor(Executor):
    """Runs trials as Ray tasks, up to ``workers`` at once.

    Args:
        address: ``None`` (or ``"local"``) starts a private local Ray for this run;
            ``"auto"`` joins the cluster this machine belongs to (``ray start``);
            ``"ray://host:10001"`` connects to a remote cluster through Ray Client.
            When Ray is already initialised in this process it is used as is.
        workers: Trials in flight at once.
        cpus_per_trial: CPUs Ray reserves for each trial (match ``device.threads``).
        gpus_per_trial: GPUs reserved per trial; fractions (0.5) put trials side by side on a GPU.
        run_dir: The run folder; Ray's temp and log files go under ``RUN/ray``.
        num_cpus: CPUs of a local Ray (default: all of this machine's).
        max_retries: Retries of a trial whose worker died.
    """

    def __init__(self, *, address: str | None = None, workers: int = 1, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, run_dir: Path | str | None = None, num_cpus: int | None = None,
                 max_retries: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.address = address
        self.slots = workers
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.temp_dir: str | None = None
        self._owns = False
        self._connected = False
        self._inflight: dict[ray.ObjectRef, tuple[dict, float]] = {}
        self._sources: dict[str, tuple[float, str]] = {}
        self._slot_actors: dict[str, Any] = {}
        self._nodes_checked = 0.0

    # -- connection ---------------------------------------------------------------------

    def _temp_dir(self) -> str:
        """``RUN/ray`` when its path is short enough for Ray's sockets, else a short temp folder linked from there."""
        if self.run_dir is not None:
            here = (self.run_dir / "ray").resolve()
            if len(str(here)) <= _MAX_TEMP_DIR:
                here.mkdir(parents=True, exist_ok=True)
                return str(here)
        short = tempfile.mkdtemp(prefix="acray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        if self.run_dir is not None:
            link = self.run_dir / "ray"
            with contextlib.suppress(OSError):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if link.is_symlink():
                    link.unlink()
                if not link.exists():
                    link.symlink_to(short, target_is_directory=True)
        return short

    def connect(self) -> None:
        """Starts or joins Ray (done on the first submit)."""
        if self._connected:
            return
        if ray.is_initialized():
            self._owns = False
        else:
            common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                          ignore_reinit_error=True)
            if self.address in (None, "local"):
                self.temp_dir = self._temp_dir()
                ray.init(address="local", num_cpus=self.num_cpus, _temp_dir=self.temp_dir,
                         object_store_memory=256 * 1024 * 1024,
                         _system_config={"task_oom_retries": self.max_retries}, **common)
            else:
                env = {k: os.environ[k] for k in _ENV_PASSED if k in os.environ}
                ray.init(address=self.address, runtime_env={"env_vars": env} if env else None, **common)
            self._owns = True
        self._connected = True
        self._ensure_slots(force=True)

    def _ensure_slots(self, force: bool = False) -> None:
        """One :class:`MeasureSlot` per alive node (re-checked every 30 s for nodes that joined)."""
        if not force and time.time() - self._nodes_checked < 30:
            return
        self._nodes_checked = time.time()
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not node.get("Alive") or node_id in self._slot_actors:
                continue
            self._slot_actors[node_id] = MeasureSlot.options(
                name=SLOT_PREFIX + node_id, get_if_exists=True, max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()

    # -- Executor -------------------------------------------------------------------------

    def _plugin_sources(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            cached = self._sources.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, Path(path).read_text())
                self._sources[path] = cached
            out[path] = cached[1]
        return out

    def submit(self, spec: TrialSpec) -> None:
        self.connect()
        self._ensure_slots()
        data = spec.to_dict() if isinstance(spec, TrialSpec) else dict(spec)
        data["run_dir"] = os.path.abspath(data["run_dir"])
        ref = _remote_trial.options(
            num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial or None, max_retries=self.max_retries,
            retry_exceptions=False, name=f"trial-{data['number']}",
        ).remote(data, self._plugin_sources(data.get("plugin_files", [])))
        self._inflight[ref] = (data, time.time())

    def poll(self, timeout: float | None = None) -> list[dict]:
        if not self._inflight:
            return []
        refs = list(self._inflight)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            data, submitted = self._inflight.pop(ref)
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                out.append(self._failed(data, submitted, err))
        return out

    def running(self) -> int:
        return len(self._inflight)

    def cancel_all(self) -> list[int]:
        """Force-cancels every running trial (their workers are killed); returns their numbers."""
        numbers = []
        for ref, (data, _) in list(self._inflight.items()):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            numbers.append(data["number"])
        self._inflight.clear()
        return numbers

    def shutdown(self) -> None:
        if self._inflight:
            self.cancel_all()
        if self._connected and self._owns:
            ray.shutdown()
        self._connected = False
        self._slot_actors.clear()

    def _failed(self, data: dict, submitted: float, err: Exception) -> dict:
        now = time.time()
        if isinstance(err, ray.exceptions.TaskCancelledError):
            reason = "cancelled"
        elif isinstance(err, ray.exceptions.OutOfMemoryError):
            reason = f"out of memory: the node's memory monitor killed the worker (retried {self.max_retries}x)"
        elif isinstance(err, ray.exceptions.RayTaskError):
            cause = err.cause if getattr(err, "cause", None) is not None else err
            text = str(cause).strip().splitlines()
            reason = f"{type(cause).__name__}: {text[0][:300] if text else ''}"
        else:
            text = str(err).strip().splitlines()
            reason = (f"worker died (retried {self.max_retries}x): {type(err).__name__}"
                      + (f": {text[0][:200]}" if text else ""))
        out_dir = trial_dir(Path(data["run_dir"]), data["number"])
        attempts = len(list(out_dir.glob(".attempt-*"))) if out_dir.is_dir() else 0
        return {
            "number": data["number"], "choices": data["choices"], "state": "fail", "reason": reason,
            "host": None, "started": submitted, "structure_only": data.get("structure_only", False),
            "finished": now, "duration_s": round(now - submitted, 3), "node_id": None, "worker_pid": None,
            "measure_slot": None, "measure_wait_s": None, "attempts": attempts,
        }
