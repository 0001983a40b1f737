"""``autocompress agent``: times artefacts on the device they ship to, for a search running elsewhere.

Run it on the target (it needs ``onnxruntime`` and/or ``openvino`` and ``numpy``; neither torch
nor Ray is imported)::

    autocompress-agent                      # 127.0.0.1:8470, a fresh token printed at start
    autocompress agent --token-file t.txt   # the same, through the main command line
    autocompress-agent --host 0.0.0.0       # reachable from other machines (a warning says so)

and point the search at it (``device.agent: http://HOST:8470``, the token in
``AUTOCOMPRESS_AGENT_TOKEN`` or ``device.agent_token_file``). The wire format is in
:mod:`autocompress.device.protocol`. The agent times one request at a time (others queue), the
way the search times locally (:func:`autocompress.device.timing.time_interleaved`), and keeps nothing:
each upload lives in a private temporary folder that is removed when its answer is sent. It
loads ONNX models and OpenVINO IR only, from bytes, through the runtime's parser; it never
unpickles, imports or executes what it is sent.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autocompress.device.machine import describe_target
from autocompress.device.protocol import (
    CONTENT_TYPE,
    DEFAULT_PORT,
    PREFIX,
    PROTOCOL,
    MeasureRequest,
    ProtocolError,
    parse_header,
    refuse_non_model,
)
from autocompress.device.timing import time_interleaved

VERSION = "0.1.0"
CHUNK = 1 << 20
TEMP_PREFIX = "acagent-"


class AgentStartError(Exception):
    """The agent cannot start: one line naming the option and what is allowed."""


def available_runtimes() -> list[str]:
    """The runtimes this machine can time with (imported once, so the first request is not slower)."""
    found = []
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            found.append(name)
        except ImportError:
            pass
    return found


class Agent:
    """The agent's state: its token, limits, machine description, the measurement lock and counters.

    Args:
        token: The token clients must send.
        max_bytes: Largest request body accepted.
        runtimes: Runtimes it can time.
        temp_root: A private (0700) folder for uploads, one subfolder per request.
    """

    def __init__(self, *, token: str, max_bytes: int, runtimes: list[str], temp_root: Path) -> None:
        self._token = token.encode()
        self.max_bytes = max_bytes
        self.runtimes = runtimes
        self.temp_root = temp_root
        self.machine = describe_target(runtimes)
        self.lock = threading.Lock()  # one measurement at a time: concurrent requests queue here
        self._counts_lock = threading.Lock()
        self.counts = {"requests": 0, "measurements": 0, "refused": 0}

    def authorised(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (compared in constant time)."""
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    def info(self) -> dict:
        """What ``GET /info`` answers."""
        with self._counts_lock:
            counts = dict(self.counts)
        return {"protocol": PROTOCOL, "version": VERSION, "runtimes": self.runtimes, "max_bytes": self.max_bytes,
                "busy": self.lock.locked(), **counts, "machine": self.machine}

    def measure(self, request: MeasureRequest, files: list[Path], example) -> dict:
        """Loads each model from its part files and times them interleaved; the answer's ``latency``.

        Raises:
            ProtocolError: 415 for a part that is not a model, 422 for a model the runtime cannot load or run.
        """
        from autocompress.device.sessions import onnx_predictor, onnx_session, openvino_predictor

        by_model: dict[str, dict[str, Path]] = {name: {} for name in request.models}
        for part, path in zip(request.parts, files):
            if part.model is not None:
                with open(path, "rb") as fh:
                    refuse_non_model(fh.read(64), part.kind)
                by_model[part.model][part.kind] = path
        predictors = {}
        for name in request.models:
            paths = by_model[name]
            try:
                if request.runtime == "onnxruntime":  # from bytes: a model cannot name external files to read
                    predictors[name] = onnx_predictor(onnx_session(paths["onnx"].read_bytes(), threads=request.threads))
                else:
                    predictors[name] = openvino_predictor(paths["xml"].read_bytes(), paths["bin"].read_bytes(),
                                                          threads=request.threads)
            except ProtocolError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever the runtime's parser says, in one line
                raise ProtocolError(422, f"model {name!r}: {request.runtime} could not load it: {_first_line(err)}")
        started = time.perf_counter()
        try:
            latency = time_interleaved(predictors, example, warmup=request.warmup, repeats=request.repeats,
                                       rounds=request.rounds)
        except Exception as err:  # noqa: BLE001 - e.g. an input shape the model does not take
            raise ProtocolError(422, f"a model failed on an input of shape {list(example.shape)}: {_first_line(err)}")
        return {"latency": {name: lat.to_dict() for name, lat in latency.items()},
                "timing_s": round(time.perf_counter() - started, 3)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # needed for Expect: 100-continue
    server_version = f"autocompress-agent/{VERSION}"
    sys_version = ""
    timeout = 120  # seconds per socket read or write: a stalled client does not hold a thread forever
    agent: Agent
    verbose = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if self.verbose:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.client_address[0]} {format % args}\n")

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="autocompress-agent"')
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def _refuse(self, status: int, message: str) -> None:
        if self.command == "POST":
            self.agent.count("refused")
        self._reply(status, {"error": message})

    def _precheck(self) -> int | None:
        """Path, token and size, before a byte of the body is read: the body's length, else ``None`` (refused)."""
        if getattr(self, "_length", None) is not None:
            return self._length
        self.agent.count("requests")
        if self.path != "/measure":
            self._refuse(404, f"no such endpoint: POST {self.path[:100]}; use POST /measure")
            return None
        if not self.agent.authorised(self.headers.get("Authorization")):
            self._refuse(401, "missing or wrong token (Authorization: Bearer TOKEN)")
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._refuse(411, "a Content-Length is required")
            return None
        if length > self.agent.max_bytes:
            self._refuse(413, f"request of {length / 1e6:.1f} MB is over this agent's limit of "
                              f"{self.agent.max_bytes / 1e6:.1f} MB (--max-mb)")
            return None
        if length < PREFIX.size:
            self._refuse(400, "request body too short")
            return None
        self._length = length
        return length

    def handle_expect_100(self) -> bool:
        if self.command == "POST" and self._precheck() is None:
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        if self.path != "/info":
            self._refuse(404, f"no such endpoint: GET {self.path[:100]}; use GET /info")
        elif not self.agent.authorised(self.headers.get("Authorization")):
            self._refuse(401, "missing or wrong token (Authorization: Bearer TOKEN)")
        else:
            self._reply(200, self.agent.info())

    def do_POST(self) -> None:  # noqa: N802
        length = self._precheck()
        if length is None:
            return
        with self.agent.lock:  # the upload too: reading it would disturb a measurement in progress
            folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.agent.temp_root))
            left = [length]
            try:
                started = time.perf_counter()
                result = self._measure(folder, length, left)
                self.agent.count("measurements")
                result.update(protocol=PROTOCOL, machine=self.agent.machine,
                              agent={"version": VERSION, "measurements": self.agent.counts["measurements"]},
                              seconds=round(time.perf_counter() - started, 3))
                self._reply(200, result)
            except ProtocolError as err:
                self._discard(left[0])
                self._refuse(err.status, str(err))
            except (ConnectionError, TimeoutError, OSError) as err:
                self.log_message("request dropped: %s", _first_line(err))
                self.close_connection = True
            except Exception as err:  # noqa: BLE001 - a bug here answers 500 and the agent serves on
                self._discard(left[0])
                self._refuse(500, f"agent error: {type(err).__name__}: {_first_line(err)}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _read(self, n: int, left: list[int]) -> bytes:
        data = self.rfile.read(n)
        left[0] -= len(data)
        if len(data) != n:
            raise ConnectionError("the client closed the connection before the whole body arrived")
        return data

    def _discard(self, n: int) -> None:
        """Reads what is left of a refused body (already within --max-mb), so the client sees the answer, not a reset."""
        try:
            while n > 0:
                data = self.rfile.read(min(CHUNK, n))
                if not data:
                    return
                n -= len(data)
        except OSError:
            pass

    def _measure(self, folder: Path, length: int, left: list[int]) -> dict:
        import numpy as np

        if (self.headers.get("Content-Type") or CONTENT_TYPE).split(";")[0].strip() != CONTENT_TYPE:
            raise ProtocolError(415, f"Content-Type must be {CONTENT_TYPE}")
        prefix = self._read(PREFIX.size, left)
        request = parse_header(prefix, lambda n: self._read(n, left), length, self.agent.runtimes)
        files = []
        for i, part in enumerate(request.parts):
            path = folder / f"part{i}.{part.kind}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                todo = part.size
                while todo:
                    block = self._read(min(CHUNK, todo), left)
                    fh.write(block)
                    todo -= len(block)
                    if part.kind != "input" and fh.tell() == len(block):
                        refuse_non_model(block[:64], part.kind)  # refused at its first bytes, not after the upload
            files.append(path)
        example_path = files[[p.kind for p in request.parts].index("input")]
        example = np.fromfile(example_path, dtype="<f4").reshape(request.shape).astype(np.float32, copy=False)
        example = np.ascontiguousarray(example)
        return self.agent.measure(request, files, example)


def _sweep_stale(tmp: Path) -> None:
    """Removes upload folders that earlier agents of this user left behind (killed with SIGKILL)."""
    for folder in tmp.glob(f"{TEMP_PREFIX}*"):
        try:
            pid = int(folder.name[len(TEMP_PREFIX):].split("-")[0])
            if folder.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, OSError):
            continue


def read_token_file(path: Path) -> str:
    """The token in a file (surrounding whitespace dropped).

    Raises:
        AgentStartError: The file is missing, unreadable, empty or holds more than one line.
    """
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise AgentStartError(f"--token-file: cannot read {path}: {_first_line(err)}") from None
    if not token or any(c.isspace() for c in token) or len(token) < 16:
        raise AgentStartError(f"--token-file: {path} must hold one token of at least 16 characters, no spaces")
    return token


def make_server(*, host: str, port: int, token: str, max_bytes: int, runtimes: list[str], temp_root: Path,
                verbose: bool = True) -> ThreadingHTTPServer:
    """A ready (bound, not yet serving) agent server.

    Raises:
        AgentStartError: The address cannot be bound.
    """
    agent = Agent(token=token, max_bytes=max_bytes, runtimes=runtimes, temp_root=temp_root)
    handler = type("Handler", (_Handler,), {"agent": agent, "verbose": verbose})
    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, port), handler)
    except OSError as err:
        raise AgentStartError(f"--host/--port: cannot listen on {host}:{port}: {_first_line(err)}") from None
    server.daemon_threads = True
    server.agent = agent  # type: ignore[attr-defined]
    return server


def exposure_warning(host: str, port: int) -> str | None:
    """The warning line for an agent that other machines can reach, or ``None`` on a loopback address."""
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: whatever it resolves to, it is not known to be loopback
        pass
    shown = f"[{host}]" if ":" in host else host
    return (f"WARNING: listening on {shown}:{port}, reachable from other machines. Anyone who can reach this "
            "port and has the token can make this machine load and time models; the token and the models "
            "travel unencrypted (plain HTTP). Use a trusted network or an SSH tunnel (ssh -L).")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocompress agent",
        description="Time ONNX / OpenVINO artefacts on this machine for an autocompress search elsewhere.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the token clients must send (default: a fresh token, printed at start)")
    parser.add_argument("--max-mb", type=float, default=512.0,
                        help="largest request accepted, in MB (default 512); larger ones are refused with 413")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    return parser


def serve(argv: list[str] | None = None) -> int:
    """Parses the options, starts the agent and serves until SIGINT or SIGTERM.

    Raises:
        AgentStartError: An option is wrong or no runtime is installed.
    """
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise AgentStartError(f"--port: {args.port} is not a port (0-65535)")
    if not 0 < args.max_mb <= 1e6:
        raise AgentStartError(f"--max-mb: {args.max_mb} must be above 0 (MB)")
    token = read_token_file(args.token_file) if args.token_file else secrets.token_urlsafe(32)
    runtimes = available_runtimes()
    if not runtimes:
        raise AgentStartError("no runtime: install onnxruntime and/or openvino on this machine "
                              "(pip install onnxruntime numpy)")
    tmp = Path(tempfile.gettempdir())
    _sweep_stale(tmp)
    temp_root = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=tmp))  # 0700
    # ONNX Runtime resolves external data of a model loaded from bytes against the working folder:
    # an empty one, so a model can name no file to read
    empty = temp_root / "cwd"
    empty.mkdir(mode=0o700)
    previous_cwd = os.getcwd()
    os.chdir(empty)
    try:
        server = make_server(host=args.host, port=args.port, token=token, max_bytes=int(args.max_mb * 1e6),
                             runtimes=runtimes, temp_root=temp_root, verbose=not args.quiet)
    except AgentStartError:
        os.chdir(previous_cwd)
        shutil.rmtree(temp_root, ignore_errors=True)
        raise
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    machine = server.agent.machine  # type: ignore[attr-defined]
    versions = ", ".join(f"{r} {machine['versions'].get(r, '?')}" for r in runtimes)
    print(f"autocompress agent listening on http://{shown}:{port}", flush=True)
    print(f"machine: {machine['hostname']}, {machine['cpu']}, {machine['usable_cpus']} CPUs, "
          f"flags {' '.join(machine['int8_flags']) or 'none'}; runtimes: {versions}", flush=True)
    if args.token_file:
        print(f"token: from {args.token_file}", flush=True)
    else:
        print(f"token: {token}", flush=True)
        print(f"  on the search's machine: export AUTOCOMPRESS_AGENT_TOKEN={token}", flush=True)
    warning = exposure_warning(host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        os.chdir(previous_cwd)
        shutil.rmtree(temp_root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``autocompress-agent`` and ``autocompress agent``: a bad option is one line, exit 2."""
    try:
        code = serve(argv)
    except AgentStartError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
