"""The search's side of ``autocompress agent``: every latency measurement sent to the target device.

With ``device.agent`` set, a trial's artefact and the base's are uploaded to an agent, which
times them interleaved and answers the figures and a description of its machine; size and
accuracy are still measured here. Several agents serve one run: each takes one measurement at
a time from this process (a lock per agent; a free one is taken in round-robin order, else the
next in turn is waited for) and the agent queues requests from other processes. An agent that
cannot be reached is skipped for the others; when none answers, the trial fails with the reason.
Each request is a new connection, so a restarted agent at the same URL is used again at once.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from http.client import parse_headers
from pathlib import Path
from typing import Any

from autocompress.device.protocol import (
    CONTENT_TYPE,
    PROTOCOL,
    RUNTIME_KINDS,
    TOKEN_ENV,
    canonical_url,
    encode_header,
    parse_agent_url,
)
from autocompress.device.timing import Latency
from autocompress.errors import UserError

CONNECT_TIMEOUT = 10.0  # seconds to open a connection (a host that drops packets is not waited for longer)
MAX_RESPONSE = 4 * 1024 * 1024
CHUNK = 1 << 20
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_turn = itertools.count()


class AgentError(RuntimeError):
    """An agent could not measure: unreachable, too slow, refused the request or answered garbage.

    Attributes:
        url: The agent's URL.
        unreachable: No connection could be opened (another agent may be tried).
        status: The HTTP status of a refusal, if any.
    """

    def __init__(self, url: str, message: str, *, unreachable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.unreachable, self.status = url, unreachable, status


def agent_token(token_file: Path | str | None) -> str:
    """The agents' token: the file's content if ``device.agent_token_file`` is set, else ``$AUTOCOMPRESS_AGENT_TOKEN``.

    Raises:
        UserError: Neither is set, the file cannot be read, or it is empty.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"device.agent_token_file: cannot read {token_file}: {err.__class__.__name__}") from None
        if not token:
            raise UserError(f"device.agent_token_file: {token_file} is empty; put the token the agent printed in it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(f"device.agent: no token; set {TOKEN_ENV} or device.agent_token_file to the token "
                        "the agent printed at start")
    return token


def _clean(text: str, limit: int = 300) -> str:
    """An untrusted one-line message, printable characters only."""
    return "".join(c if c.isprintable() else " " for c in str(text))[:limit]


def _read_head(fp, url: str) -> tuple[int, Any]:
    line = fp.readline(1024)
    if not line:
        raise AgentError(url, f"agent {url} closed the connection without answering")
    try:
        version, status, *_ = line.decode("latin-1").split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        status = int(status)
    except ValueError:
        raise AgentError(url, f"agent {url} returned garbage: not an HTTP response ({_clean(line[:60])!r})") from None
    return status, parse_headers(fp)


def _exchange(url: str, method: str, path: str, token: str, *, timeout: float,
              prefix: bytes = b"", files: list[Path] = ()) -> tuple[int, dict]:
    """One HTTP request on a fresh connection; ``(status, JSON answer)``. A body is sent after ``100 Continue``.

    Raises:
        AgentError: No connection, a timeout, a dropped connection or an answer that is not JSON.
    """
    host, port = parse_agent_url(url)
    try:
        sock = socket.create_connection((host, port), timeout=min(CONNECT_TIMEOUT, timeout))
    except OSError as err:
        raise AgentError(url, f"agent {url} unreachable: {_clean(err)}", unreachable=True) from None
    try:
        with sock:
            sock.settimeout(timeout)
            length = len(prefix) + sum(Path(f).stat().st_size for f in files)
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Bearer {token}",
                    "Connection: close", "User-Agent: autocompress", "Accept: application/json"]
            if method == "POST":
                head += [f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {length}", "Expect: 100-continue"]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            fp = sock.makefile("rb")
            status, headers = _read_head(fp, url)
            if method == "POST" and status == 100:
                try:
                    sock.sendall(prefix)
                    for f in files:
                        with open(f, "rb") as fh:
                            while block := fh.read(CHUNK):
                                sock.sendall(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent refused mid-body: its answer is read below
                status, headers = _read_head(fp, url)
            try:
                size = int(headers.get("Content-Length", ""))
            except ValueError:
                raise AgentError(url, f"agent {url} returned garbage: an answer without a Content-Length") from None
            if not 0 <= size <= MAX_RESPONSE:
                raise AgentError(url, f"agent {url} returned garbage: an answer of {size} bytes")
            raw = fp.read(size)
    except socket.timeout:
        raise AgentError(url, f"agent {url} did not answer within {timeout:g}s (device.agent_timeout)") from None
    except OSError as err:
        raise AgentError(url, f"agent {url} dropped the connection: {_clean(err)}") from None
    try:
        answer = json.loads(raw)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except ValueError:
        raise AgentError(url, f"agent {url} returned garbage: the answer (HTTP {status}) is not a JSON object") from None
    return status, answer


def _refused(url: str, status: int, answer: dict) -> AgentError:
    if status == 401:
        return AgentError(url, f"agent {url} refused the token (401): set {TOKEN_ENV} or device.agent_token_file "
                               "to the token the agent printed", status=status)
    return AgentError(url, f"agent {url} refused the request (HTTP {status}): {_clean(answer.get('error', ''))}",
                      status=status)


def agent_info(url: str, token: str, *, timeout: float = 30.0) -> dict:
    """An agent's ``GET /info``: runtimes, limits, counters and machine.

    Raises:
        AgentError: Unreachable, refused or garbage.
    """
    status, answer = _exchange(url, "GET", "/info", token, timeout=timeout)
    if status != 200:
        raise _refused(url, status, answer)
    if not isinstance(answer.get("machine"), dict) or not isinstance(answer.get("runtimes"), list):
        raise AgentError(url, f"agent {url} returned garbage: /info without machine or runtimes")
    return answer


def check_agents(urls: list[str], token_file: Path | None, runtimes: list[str], *, timeout: float) -> dict[str, dict]:
    """Asks every agent for ``/info`` before any work; ``{url: machine description}``.

    Raises:
        UserError: No token, an agent unreachable or refusing the token, or one without a runtime the run targets.
    """
    token = agent_token(token_file)
    machines = {}
    for url in urls:
        try:
            info = agent_info(url, token, timeout=min(timeout, 30.0))
        except AgentError as err:
            hint = "; start `autocompress agent` there or fix the URL" if err.unreachable else ""
            raise UserError(f"device.agent: {err}{hint}") from None
        missing = [r for r in runtimes if r not in info["runtimes"]]
        if missing:
            raise UserError(f"device.agent: agent {url} has no {', '.join(missing)} (it has: "
                            f"{', '.join(map(str, info['runtimes'])) or 'none'}); install it there or change device.runtime")
        machines[canonical_url(url)] = info["machine"]
    return machines


def _lock(url: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(url, threading.Lock())


def _acquire(urls: list[str], timeout: float) -> str:
    """Takes a free agent in round-robin order, else waits (up to ``timeout``) for the next one in turn; its URL.

    Raises:
        AgentError: This process kept it busy past ``timeout``.
    """
    start = next(_turn) % len(urls)
    order = urls[start:] + urls[:start]
    for url in order:
        if _lock(url).acquire(blocking=False):
            return url
    if not _lock(order[0]).acquire(timeout=timeout):
        raise AgentError(order[0], f"agent {order[0]} did not answer within {timeout:g}s (device.agent_timeout): "
                                   "busy with another measurement of this process")
    return order[0]


def measure_on_agents(urls: list[str], token: str, *, runtime: str, models: dict[str, list[Path]], example,
                      warmup: int, repeats: int, rounds: int, threads: int,
                      timeout: float) -> tuple[dict[str, Latency], dict]:
    """Times ``models`` (interleaved, in the order given) on one of the agents.

    Args:
        urls: Agent URLs; one free one is used, an unreachable one is skipped for the next.
        token: The agents' token.
        runtime: ``onnxruntime`` or ``openvino``.
        models: ``{name: files}``: an ``.onnx`` file, or an OpenVINO ``.xml`` and its ``.bin``.
        example: The input, a float32 numpy array (its shape and batch size are the measured ones).
        warmup, repeats, rounds, threads: As ``device`` says.
        timeout: Seconds to wait for the agent at each step (upload, queue and timing included).

    Returns:
        ``({name: Latency}, {"agent": url, "machine": {...}})``.

    Raises:
        AgentError: No agent measured (the message gives each one's reason).
    """
    import numpy as np

    example = np.ascontiguousarray(example, dtype="<f4")
    parts: list[dict] = [{"kind": "input", "size": example.nbytes}]
    files: list[Path] = []
    for name, paths in models.items():
        by_kind = {Path(p).suffix.lstrip("."): Path(p) for p in paths}
        for kind in RUNTIME_KINDS[runtime]:
            parts.append({"model": name, "kind": kind, "size": by_kind[kind].stat().st_size})
            files.append(by_kind[kind])
    header = {"protocol": PROTOCOL, "runtime": runtime, "threads": threads, "warmup": warmup, "repeats": repeats,
              "rounds": rounds, "input": {"shape": list(example.shape), "dtype": "float32"},
              "models": list(models), "parts": parts}
    prefix = encode_header(header) + example.tobytes()
    remaining = [canonical_url(u) for u in urls]
    reasons = []
    while remaining:
        url = _acquire(remaining, timeout)
        try:
            status, answer = _exchange(url, "POST", "/measure", token, timeout=timeout, prefix=prefix, files=files)
            if status != 200:
                raise _refused(url, status, answer)
            return _latencies(url, answer, list(models)), {"agent": url, "machine": _machine(url, answer)}
        except AgentError as err:
            if not err.unreachable:
                raise
            reasons.append(str(err))
            remaining.remove(url)
        finally:
            _lock(url).release()
    raise AgentError(urls[0] if len(urls) == 1 else ", ".join(urls), "; ".join(reasons), unreachable=True)


def _latencies(url: str, answer: dict, names: list[str]) -> dict[str, Latency]:
    figures = answer.get("latency")
    if not isinstance(figures, dict) or set(figures) != set(names):
        raise AgentError(url, f"agent {url} returned garbage: no latency figures for {', '.join(names)}")
    try:
        return {name: Latency.from_dict(figures[name]) for name in names}
    except ValueError as err:
        raise AgentError(url, f"agent {url} returned garbage: {_clean(err)}") from None


def _machine(url: str, answer: dict) -> dict:
    machine = answer.get("machine")
    if not isinstance(machine, dict) or len(json.dumps(machine)) > 20_000:
        raise AgentError(url, f"agent {url} returned garbage: no machine description")
    return machine


def wait_ready(url: str, token: str, *, timeout: float = 30.0) -> dict:
    """Polls ``/info`` until the agent answers (tests, scripts); its answer.

    Raises:
        AgentError: It did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return agent_info(url, token, timeout=5.0)
        except AgentError as err:
            if not err.unreachable or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
