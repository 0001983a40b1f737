"""Trials as Ray tasks: several at once, on one machine or a cluster.

Each trial is one Ray task that calls :func:`autocompress.trial.pipeline.run_trial` on the plain
spec dict and returns its typed record, so the controller sees the same records as
in-process. What this module adds:

* **Worker death.** A task whose worker process dies (SIGKILL, the OOM killer, a segfault
  in a native library) is retried once (``max_retries=1``); if the retry dies too, the
  trial comes back as a failed record with reason ``worker died ...``. A trial's own
  exception is not retried (``retry_exceptions=False``): :func:`run_trial` already turns
  it into a failed record.
* **Fair latency.** One measurement slot per node: a small named actor
  (:class:`MeasureSlot`) pinned to each node with ``NodeAffinitySchedulingStrategy``.
  The task swaps :data:`autocompress.trial.pipeline.measurement_lock` for a lock taken from its
  node's actor, so two trials never time their models at the same moment on one node.
  A holder that dies while measuring is detected (its PID is gone) and the slot freed.
  Each record says where its figures came from: ``host``, ``node_id``, ``device``,
  ``worker_pid`` and ``measure_wait_s``.
* **Plugins.** The spec carries plugin file paths; the executor also ships each file's
  SHA-256 and bytes with each task, and the worker checks them on every task. It uses the
  driver's path when that file is there with the same hash and only its owner (this user or
  root) can change it (one machine, a shared filesystem); otherwise it uses a copy in a
  private (0700) folder of the run in its node's Ray session (of the worker process where
  other users can reach that session), rewritten from the shipped bytes whenever the copy
  there does not hash to the shipped SHA-256. Code that does not match is never imported.
* **Private local Ray.** A local Ray listens on 127.0.0.1 only (every process it starts:
  GCS, raylet, object manager, workers, agents), with Ray's token authentication on: a
  random token for this run, handed to Ray's processes in their environment
  (``RAY_AUTH_TOKEN``; no file, nothing in ``~/.ray``), unless ``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH`` already name one. ``RAY_AUTH_MODE=disabled`` in the environment
  is respected, with a warning. Ray's temp folder (sockets, logs) is inside a folder only
  this user can enter (0700).
* **Quiet and tidy.** A local Ray is started with the dashboard off, worker output kept
  out of the terminal (``log_to_driver=False``), its temp and log files under
  ``RUN/ray`` (or a short temp folder linked from there, because Ray's unix sockets
  need a short path), and ``ray.shutdown()`` at the end. A Ray that was already
  initialised in this process (tests, notebooks) is used and left running.

Base model and data: workers read ``base/weights.safetensors`` and the base artefact from the
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
import secrets
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autocompress.execution.executors import Executor
from autocompress.trial import STEP_FILE, StepTimeout, TrialRecord, TrialSpec, read_step_file, trial_dir

SLOT_PREFIX = "autocompress-measure-"
_MAX_TEMP_DIR = 36  # Ray's socket paths add ~70 characters; unix sockets allow 107
STEP_GRACE_S = 30.0  # a step still running this long after search.step_timeout has its worker killed
_ENV_PASSED = ("HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "HF_DATASETS_OFFLINE", "AUTOCOMPRESS_AGENT_TOKEN")
LOOPBACK = "127.0.0.1"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # Ray's (2.52+) token authentication
PLUGIN_DIR = "autocompress-plugins"
RAY_SUBDIR = "t"  # Ray's temp folder, inside the run's private one (Ray makes its own folders 0777)
log = logging.getLogger("autocompress.ray")


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_regular(path: Path) -> bytes | None:
    """The bytes of the regular file at ``path``, not through a symlink; ``None`` when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def _only_owner_can_change(path: Path) -> bool:
    """Whether only this user (or root) can change ``path``: the file and its folder are theirs and
    writable by no one else (a shared folder with the sticky bit, like /tmp, is fine)."""
    owners = {os.getuid(), 0}
    try:
        st, parent = os.lstat(path), os.stat(path.parent)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o022:
        return False
    return parent.st_uid in owners and (not parent.st_mode & 0o022 or bool(parent.st_mode & stat.S_ISVTX))


def _private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can enter: made 0700, refused when it is a link or someone else's."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a folder of this user: plugin code is not written there")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _shielded(path: Path) -> bool:
    """Whether other users cannot reach ``path``: it or a folder above it is this user's and closed
    to others (no ``x`` for group or others), like the run's private Ray folder."""
    for folder in (path, *path.parents):
        try:
            st = os.stat(folder)
        except OSError:
            return False
        if st.st_uid == os.getuid() and not st.st_mode & 0o011:
            return True
    return False


_process_plugin_dir: list[Path] = []


def _node_plugin_dir(run_dir: str) -> Path:
    """This node's private folder for the run's shipped plugin files:
    ``<Ray session>/autocompress-plugins/<run key>/`` (0700) when other users cannot reach the
    session folder (a local Ray of autocompress's), else a 0700 temp folder of this worker process
    (a cluster's shared ``/tmp/ray``, which Ray makes world-writable)."""
    node = getattr(ray._private.worker, "_global_node", None)
    session = Path(node.get_session_dir_path()) if node is not None else None
    if session is not None and _shielded(session):
        base = _private_dir(session / PLUGIN_DIR)
    else:
        if not _process_plugin_dir:
            import atexit
            import shutil

            _process_plugin_dir.append(Path(tempfile.mkdtemp(prefix=PLUGIN_DIR + "-")))
            atexit.register(shutil.rmtree, _process_plugin_dir[0], True)
        base = _process_plugin_dir[0]
    return _private_dir(base / _sha256(os.path.abspath(run_dir).encode())[:16])


def _write_checked(target: Path, data: bytes, digest: str) -> None:
    """Makes ``target`` hold ``data`` (of SHA-256 ``digest``): kept when it already does, else rewritten."""
    current = _read_regular(target)
    if current is not None and _sha256(current) == digest:
        return
    if current is not None or target.is_symlink():
        log.warning("%s does not match the SHA-256 shipped with the task: rewritten from the shipped source", target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)  # replaces a link itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _materialise(paths: list[str], plugins: list[dict], folder) -> list[str]:
    """Plugin files this worker may import, each checked against the SHA-256 shipped with the task.

    Args:
        paths: The spec's plugin files (the driver's paths).
        plugins: What the driver shipped, ``{"path", "sha256", "source"}`` (bytes) per file.
        folder: Returns the private folder for copies (called only when one is needed).

    The driver's paths are used when each file there hashes to the shipped SHA-256 and only its
    owner can change it (one machine, a shared filesystem). Otherwise the copies
    ``folder()/<set>/<name>`` are used, each written from the shipped source when it is missing
    or does not hash to its SHA-256 (checked on every call, so a tampered copy is never imported).

    Raises:
        ValueError: A path was not shipped, or a shipped source does not hash to its SHA-256.
    """
    shipped = {p["path"]: p for p in plugins}
    for path in paths:
        item = shipped.get(path)
        if item is None:
            raise ValueError(f"plugin file {path} was not shipped with the task (the driver could not read it)")
        if _sha256(item["source"]) != item["sha256"]:
            raise ValueError(f"plugin file {path}: the shipped source does not match its SHA-256; not used")
    def in_place(path: str) -> bool:
        data = _read_regular(Path(path))
        return data is not None and _sha256(data) == shipped[path]["sha256"] and _only_owner_can_change(Path(path))

    if all(in_place(path) for path in paths):
        return list(paths)
    # else copies of all of them, side by side under their own names (a plugin may load a sibling by name)
    key = _sha256("\n".join(sorted(f"{Path(p).name}:{shipped[p]['sha256']}" for p in paths)).encode())[:16]
    base = _private_dir(folder() / key)
    out, names = [], set()
    for path in paths:
        item, name = shipped[path], Path(path).name
        where = base if name not in names else _private_dir(base / item["sha256"][:16])
        names.add(name)
        _write_checked(where / name, item["source"], item["sha256"])
        out.append(str(where / name))
    return out


def _trial_task(spec: dict, plugins: list[dict]) -> TrialRecord:
    """Body of the Ray task: one trial on this worker, measured under the node's slot."""
    import autocompress.trial.pipeline as trial_module
    from autocompress.trial import run_trial

    files = _materialise(spec.get("plugin_files", []), plugins, lambda: _node_plugin_dir(spec["run_dir"]))
    spec = dict(spec, plugin_files=files)
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
    return record.set_execution(**info, attempts=len(list(out_dir.glob(".attempt-*"))))


_remote_trial = ray.remote(_trial_task)


@contextlib.contextmanager
def _loopback_node():
    """Lets ``ray.init(_node_ip_address="127.0.0.1")`` keep that address.

    Ray (2.60) swaps a loopback node address for the machine's outward one
    (``services.resolve_ip_for_localhost``) unless it runs as a one-machine Ray, as it does on
    macOS and Windows (``ray_constants.ENABLE_RAY_CLUSTER`` false). With the node at 127.0.0.1,
    every server Ray starts binds 127.0.0.1 rather than all interfaces: GCS, raylet (node and
    object manager), workers, the dashboard and runtime-env agents, the metrics exporter. Only
    this process's flag is switched, and only while Ray starts.
    """
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def _reload_ray_auth() -> None:
    """Makes this process's Ray read ``RAY_AUTH_*`` again (its config and its token are cached)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")  # first: a still-draining gRPC thread must not reload a token about to go
    AuthenticationTokenLoader.instance().reset_cache()


def _start_token_auth() -> dict | None:
    """Token authentication for a local Ray about to start: on, with a random token for this run in
    ``RAY_AUTH_TOKEN`` (inherited by every process Ray starts, readable by this user only), unless
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` already name one. Ray left to itself would write
    ``~/.ray/auth_token``. Returns what :func:`_end_token_auth` restores; ``None`` when
    ``RAY_AUTH_MODE`` says otherwise (``disabled`` is respected, with a warning)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        log.warning("RAY_AUTH_MODE=disabled is set: the local Ray starts without authentication. It listens on "
                    "127.0.0.1 only, but any process on this machine can run code in it; unset RAY_AUTH_MODE "
                    "to protect it with a token.")
        return None
    if mode not in ("", "token"):
        return None  # another mode of Ray's: its own business
    saved = {k: os.environ.get(k) for k in AUTH_VARS}
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    _reload_ray_auth()
    return saved


def _end_token_auth(saved: dict | None) -> None:
    """Puts ``RAY_AUTH_*`` back as they were before :func:`_start_token_auth`."""
    if saved is None:
        return
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reload_ray_auth()


class RayExecutor(Executor):
    """Runs trials as Ray tasks, up to ``workers`` at once.

    Args:
        address: ``None`` (or ``"local"``) starts a private local Ray for this run (on
            127.0.0.1 only, with token authentication; see :meth:`connect`);
            ``"auto"`` joins the cluster this machine belongs to (``ray start``);
            ``"ray://host:10001"`` connects to a remote cluster through Ray Client.
            When Ray is already initialised in this process it is used as is.
        workers: Trials in flight at once.
        cpus_per_trial: CPUs Ray reserves for each trial (match ``device.threads``).
        gpus_per_trial: GPUs reserved per trial; fractions (0.5) put trials side by side on a GPU.
        run_dir: The run folder; Ray's temp and log files go under ``RUN/ray``.
        num_cpus: CPUs of a local Ray (default: all of this machine's).
        max_retries: Retries of a trial whose worker died.
        step_grace_s: A trial whose step (``search.step_timeout``, see :mod:`autocompress.trial.watchdog`) is
            still running this long after its limit has not returned to Python to be interrupted: it is
            force-cancelled (its worker killed) and recorded failed, ``step timeout: ...; force-cancelled``.
    """

    def __init__(self, *, address: str | None = None, workers: int = 1, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, run_dir: Path | str | None = None, num_cpus: int | None = None,
                 max_retries: int = 1, step_grace_s: float = STEP_GRACE_S) -> None:
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
        self._auth: dict | None = None
        self._inflight: dict[ray.ObjectRef, tuple[dict, float]] = {}
        self._sources: dict[str, tuple[tuple, dict]] = {}
        self._slot_actors: dict[str, Any] = {}
        self._nodes_checked = 0.0
        self.step_grace_s = step_grace_s
        self._steps_checked = 0.0
        self._step_seen: dict[tuple, float] = {}
        self._timed_out: dict[ray.ObjectRef, StepTimeout] = {}

    # -- connection ---------------------------------------------------------------------

    def _temp_dir(self) -> str:
        """Ray's temp folder, ``t`` inside a folder only this user can enter (0700): ``RUN/ray`` when
        the path is short enough for Ray's unix sockets, else a short ``/tmp/acray-*`` linked as
        ``RUN/ray``. Ray makes its own folders world-writable; the private one around them keeps
        other users away from Ray's sockets, logs and the workers' plugin copies. A link left at
        ``RUN/ray`` by an earlier run is replaced, never followed."""
        link = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            link = self.run_dir.resolve() / "ray"
            if link.is_symlink():  # an earlier run's temp folder: it may be gone, or someone else's now
                link.unlink()
            if len(str(link / RAY_SUBDIR)) <= _MAX_TEMP_DIR:
                return str(_private_dir(link) / RAY_SUBDIR)
        short = tempfile.mkdtemp(prefix="acray-", dir="/tmp" if os.path.isdir("/tmp") else None)  # 0700
        if link is not None:
            with contextlib.suppress(OSError):
                if not link.exists():
                    link.symlink_to(short, target_is_directory=True)
        return str(Path(short) / RAY_SUBDIR)

    def connect(self) -> None:
        """Starts or joins Ray (done on the first submit).

        A local Ray listens on 127.0.0.1 only, with token authentication (see
        :func:`_start_token_auth`) and no dashboard; it is refused if it did not come up on loopback.
        """
        if self._connected:
            return
        if ray.is_initialized():
            self._owns = False
        else:
            common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                          ignore_reinit_error=True)
            if self.address in (None, "local"):
                self.temp_dir = self._temp_dir()
                self._auth = _start_token_auth()
                try:
                    with _loopback_node():
                        ray.init(address="local", num_cpus=self.num_cpus, _temp_dir=self.temp_dir,
                                 _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                                 object_store_memory=256 * 1024 * 1024,
                                 _system_config={"task_oom_retries": self.max_retries}, **common)
                    gcs = ray.get_runtime_context().gcs_address
                    if not gcs.startswith(LOOPBACK + ":"):
                        raise RuntimeError(f"the local Ray came up at {gcs}, not on {LOOPBACK} only; not used "
                                           f"(this Ray {ray.__version__} may not keep a loopback node address)")
                except BaseException:
                    if ray.is_initialized():
                        ray.shutdown()
                    _end_token_auth(self._auth)
                    self._auth = None
                    raise
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

    def _plugins(self, paths: list[str]) -> list[dict]:
        """What a task ships of its plugin files: ``{"path", "sha256", "source"}`` each (the worker
        checks the hash on every use, see :func:`_materialise`). A file this process cannot read
        is left out, and the worker then refuses the trial."""
        out = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._sources.get(path)
            if cached is None or cached[0] != key:
                try:
                    data = Path(path).read_bytes()
                except OSError:
                    continue
                cached = (key, {"path": path, "sha256": _sha256(data), "source": data})
                self._sources[path] = cached
            out.append(cached[1])
        return out

    def _launch(self, spec: TrialSpec) -> tuple[Any, dict, float]:
        self.connect()
        self._ensure_slots()
        data = spec.to_dict() if isinstance(spec, TrialSpec) else dict(spec)
        data["run_dir"] = os.path.abspath(data["run_dir"])
        ref = _remote_trial.options(
            num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial or None, max_retries=self.max_retries,
            retry_exceptions=False, name=f"trial-{data['number']}",
        ).remote(data, self._plugins(data.get("plugin_files", [])))
        return ref, data, time.time()

    def submit(self, spec: TrialSpec) -> None:
        ref, data, submitted = self._launch(spec)
        self._inflight[ref] = (data, submitted)

    def run(self, spec: TrialSpec) -> TrialRecord:
        ref, data, submitted = self._launch(spec)
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            return self._failed(data, submitted, err)

    def poll(self, timeout: float | None = None) -> list[TrialRecord]:
        if not self._inflight:
            return []
        self._watch_steps()
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
                out.append(self._failed(data, submitted, err, self._timed_out.pop(ref, None)))
            self._timed_out.pop(ref, None)
        return out

    def _watch_steps(self) -> None:
        """Force-cancels trials whose step runs ``step_grace_s`` past its limit (every 2 s at most).

        The worker's own timer (:func:`autocompress.trial.watchdog.timed_step`) stops a step at its
        limit unless it hangs inside one native call; this kills the worker then. Each step
        writes :data:`~autocompress.trial.watchdog.STEP_FILE` in its trial folder (shared by the nodes):
        its start is taken from it on this host, else from when this controller first saw it.
        """
        now = time.time()
        if now - self._steps_checked < 2.0:
            return
        self._steps_checked = now
        seen = {}
        for ref, (data, _) in self._inflight.items():
            if ref in self._timed_out:
                continue
            info = read_step_file(trial_dir(Path(data["run_dir"]), data["number"]))
            if info is None or not info.get("limit"):
                continue
            key = (data["number"], info.get("pid"), info.get("started"), info.get("step"))
            seen[key] = self._step_seen.get(key, now)
            started = info["started"] if info.get("host") == socket.gethostname() else seen[key]
            if now - started > info["limit"] + self.step_grace_s:
                self._timed_out[ref] = StepTimeout(info["step"], info["limit"], note=(
                    f"; force-cancelled {self.step_grace_s:g}s later: it did not return to Python"))
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                with contextlib.suppress(OSError):
                    (trial_dir(Path(data["run_dir"]), data["number"]) / STEP_FILE).unlink()
        self._step_seen = seen

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
        self._timed_out.clear()
        return numbers

    def shutdown(self) -> None:
        if self._inflight:
            self.cancel_all()
        if self._connected and self._owns:
            ray.shutdown()
            _end_token_auth(self._auth)
            self._auth = None
        self._connected = False
        self._slot_actors.clear()

    def _failed(self, data: dict, submitted: float, err: Exception, timed_out: StepTimeout | None = None) -> TrialRecord:
        """The record of a task that came back without one: cancelled, killed, or past its step limit."""
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
        details = {"timed_out": timed_out.to_dict()} if timed_out is not None else {}
        record = TrialRecord.failed(number=data["number"], choices=data["choices"], started=submitted,
                                    reason=timed_out.reason if timed_out is not None else reason,
                                    structure_only=data.get("structure_only", False), **details)
        return record.set_execution(node_id=None, worker_pid=None, measure_slot=None, measure_wait_s=None,
                                    attempts=attempts)
