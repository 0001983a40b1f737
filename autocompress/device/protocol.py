"""The wire format between a search and ``autocompress agent`` (no torch, no Ray, no pydantic).

Everything is HTTP/1.1 on one connection per request (``Connection: close``), with the agent's
token in ``Authorization: Bearer TOKEN``:

``GET /info``
    200 and a JSON object: ``protocol``, ``version``, ``runtimes`` it can time, ``max_bytes`` of
    a request body, ``busy``, counters (``requests``, ``measurements``, ``refused``) and
    ``machine`` (host, CPU model and flags, cores, runtime versions).

``POST /measure``
    Sent with ``Expect: 100-continue``: the agent checks the token (401) and the
    ``Content-Length`` against its limit (413) before it reads a byte of the body. The body is::

        b"ACM1" | header length (4 bytes, big-endian) | header (UTF-8 JSON) | part 0 | part 1 | ...

    The header::

        {"protocol": 1, "runtime": "onnxruntime", "threads": 2, "warmup": 20, "repeats": 50, "rounds": 5,
         "input": {"shape": [1, 3, 32, 32], "dtype": "float32"},
         "models": ["trial", "base"],
         "parts": [{"kind": "input", "size": 12288},
                   {"model": "trial", "kind": "onnx", "size": 1234567},
                   {"model": "base", "kind": "onnx", "size": 4567890}]}

    ``kind`` is ``input`` (the example, raw little-endian float32 in C order), ``onnx`` (one
    per model on ``onnxruntime``) or ``xml`` and ``bin`` (an OpenVINO IR pair per model on
    ``openvino``); the sizes add up to the rest of the body exactly. The models are timed in
    the order given, interleaved round by round (:func:`autocompress.device.timing.time_interleaved`).
    200 answers ``{"protocol": 1, "latency": {model: Latency fields}, "machine": {...},
    "agent": {"version", "measurements"}, "seconds"}``; an error answers ``{"error": "one line"}``
    with 400 (malformed request), 401 (token), 404, 411 (no length), 413 (too large), 415 (a
    part that is not an ONNX model or OpenVINO IR: zip, pickle, ...) or 422 (the runtime could
    not load or run a model).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

PROTOCOL = 1
MAGIC = b"ACM1"
PREFIX = struct.Struct(">4sI")  # magic, header length
MAX_HEADER_BYTES = 64 * 1024
CONTENT_TYPE = "application/vnd.autocompress.measure"
TOKEN_ENV = "AUTOCOMPRESS_AGENT_TOKEN"
DEFAULT_PORT = 8470
RUNTIME_KINDS = {"onnxruntime": ("onnx",), "openvino": ("xml", "bin")}  # the parts of one model, per runtime
LIMITS = {"threads": (1, 1024), "warmup": (0, 100_000), "repeats": (1, 100_000), "rounds": (1, 1000)}
MAX_MODELS = 4
MAX_INPUT_ELEMENTS = 64 * 1024 * 1024
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ProtocolError(Exception):
    """A request the agent refuses: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Part:
    """One part of a request body: the input or one file of a model."""

    kind: str
    size: int
    model: str | None = None


@dataclass
class MeasureRequest:
    """A parsed, checked ``POST /measure`` header."""

    runtime: str
    threads: int
    warmup: int
    repeats: int
    rounds: int
    shape: tuple[int, ...]
    models: list[str]
    parts: list[Part]


def parse_agent_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an agent URL ``http://HOST:PORT`` (a trailing ``/`` allowed).

    Raises:
        ValueError: Anything else: another scheme, no host or port, a path, query or user.
    """
    if not isinstance(url, str):
        raise ValueError("an agent URL is a string, http://HOST:PORT")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise ValueError(f"not an agent URL: {url!r} ({err}); use http://HOST:PORT") from None
    if parts.scheme != "http":
        raise ValueError(f"not an agent URL: {url!r}; use http://HOST:PORT (the agent speaks plain HTTP: "
                         "tunnel it through ssh -L to cross an untrusted network)")
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ValueError(f"not an agent URL: {url!r}; use http://HOST:PORT, with no path or user "
                         "(the token goes in AUTOCOMPRESS_AGENT_TOKEN or device.agent_token_file)")
    return parts.hostname, port


def canonical_url(url: str) -> str:
    """``http://host:port`` of an agent URL (no trailing slash), for records and locks."""
    host, port = parse_agent_url(url)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def encode_header(header: dict) -> bytes:
    """The body's prefix: magic, header length and the header's JSON."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"request header of {len(raw)} bytes is over {MAX_HEADER_BYTES}")
    return PREFIX.pack(MAGIC, len(raw)) + raw


def parse_header(prefix: bytes, read_header, body_bytes: int, runtimes: list[str]) -> MeasureRequest:
    """Checks a request's prefix and header against the body length and the agent's runtimes.

    Args:
        prefix: The first ``PREFIX.size`` bytes of the body.
        read_header: ``read_header(n)`` returns the next ``n`` bytes of the body.
        body_bytes: The ``Content-Length``.
        runtimes: The runtimes this agent can time.

    Raises:
        ProtocolError: 400 for a malformed header or sizes that do not add up, 422 for a runtime
            the agent does not have.
    """
    if len(prefix) != PREFIX.size:
        raise ProtocolError(400, "body too short for the request prefix")
    magic, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(400, "body does not start with the ACM1 magic: not an autocompress measure request")
    if not 0 < length <= MAX_HEADER_BYTES or PREFIX.size + length > body_bytes:
        raise ProtocolError(400, f"header length {length} is out of range")
    try:
        header = json.loads(read_header(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(400, "header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError(400, "header is not a JSON object")
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(400, f"protocol {header.get('protocol')!r} is not spoken here; this agent speaks {PROTOCOL}")
    runtime = header.get("runtime")
    if runtime not in RUNTIME_KINDS:
        raise ProtocolError(400, f"runtime {runtime!r}: an agent times {', '.join(RUNTIME_KINDS)} artefacts only")
    if runtime not in runtimes:
        raise ProtocolError(422, f"runtime {runtime!r} is not installed on this agent (it has: {', '.join(runtimes)})")
    numbers = {}
    for key, (low, high) in LIMITS.items():
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProtocolError(400, f"{key} must be an integer from {low} to {high}, not {value!r}")
        numbers[key] = value
    spec = header.get("input")
    shape = spec.get("shape") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or spec.get("dtype") != "float32" or not isinstance(shape, list) \
            or not 1 <= len(shape) <= 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ProtocolError(400, "input must be {shape: [positive integers, up to 8], dtype: float32}")
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_INPUT_ELEMENTS:
        raise ProtocolError(400, f"input of {elements} elements is over {MAX_INPUT_ELEMENTS}")
    models = header.get("models")
    if not isinstance(models, list) or not 1 <= len(models) <= MAX_MODELS or len(set(map(str, models))) != len(models) \
            or not all(isinstance(m, str) and _NAME.match(m) for m in models):
        raise ProtocolError(400, f"models must list 1 to {MAX_MODELS} distinct names (lower case, digits, _)")
    raw_parts = header.get("parts")
    if not isinstance(raw_parts, list) or len(raw_parts) > 1 + 2 * MAX_MODELS:
        raise ProtocolError(400, "parts must be a list of {kind, size, model}")
    parts = []
    for raw in raw_parts:
        if not isinstance(raw, dict) or set(raw) - {"kind", "size", "model"}:
            raise ProtocolError(400, "each part is {kind, size, model}")
        size = raw.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(400, f"part size must be a non-negative integer, not {size!r}")
        parts.append(Part(kind=raw.get("kind"), size=size, model=raw.get("model")))
    inputs = [p for p in parts if p.kind == "input"]
    if len(inputs) != 1 or inputs[0].model is not None or inputs[0].size != 4 * elements:
        raise ProtocolError(400, f"one input part of {4 * elements} bytes (float32 of shape {shape}) is needed")
    kinds = RUNTIME_KINDS[runtime]
    for name in models:
        mine = sorted(p.kind for p in parts if p.model == name)
        if mine != sorted(kinds):
            raise ProtocolError(400, f"model {name!r} on {runtime} needs exactly the parts {', '.join(kinds)}, "
                                     f"not {', '.join(map(str, mine)) or 'none'}")
    if len(parts) != 1 + len(kinds) * len(models):
        raise ProtocolError(400, "a part belongs to no model listed in models")
    if PREFIX.size + length + sum(p.size for p in parts) != body_bytes:
        raise ProtocolError(400, "the parts' sizes do not add up to the Content-Length")
    return MeasureRequest(runtime=runtime, shape=tuple(shape), models=list(models), parts=parts, **numbers)


def refuse_non_model(head: bytes, kind: str) -> None:
    """Refuses a model part that is plainly not an ONNX model or an OpenVINO IR, from its first bytes.

    What is not refused here is still parsed by the runtime (never executed as code) before use.

    Raises:
        ProtocolError: 415, naming what the bytes look like.
    """
    if kind == "bin":  # raw weights of an IR: no format, read only as the tensors its .xml describes
        return
    looks = None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        looks = "a zip archive (a torch .pt/.pt2 file or similar)"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        looks = "a pickle"
    elif head.startswith(b"\x93NUMPY"):
        looks = "a numpy array file"
    elif head.startswith(b"\x7fELF") or head.startswith(b"#!") or head.startswith(b"MZ"):
        looks = "an executable"
    if looks is None and kind == "onnx" and head[:1] != b"\x08":
        looks = "not an ONNX model (an ONNX file starts with its ir_version field, byte 0x08)"
    if looks is None and kind == "xml":
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not (text.startswith(b"<?xml") or text.startswith(b"<net")):
            looks = "not an OpenVINO IR (.xml)"
    if looks:
        raise ProtocolError(415, f"refused a {kind} part: {looks}; an agent times ONNX models and OpenVINO IR only")
