"""``autocompress agent``: a real agent process on 127.0.0.1 times what the search sends it."""

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.device.client import AgentError, agent_info, measure_on_agents, wait_ready
from autocompress.device.protocol import CONTENT_TYPE, encode_header
from autocompress.config.schema import load_config
from autocompress.search.controller import Search
from autocompress.errors import UserError
from autocompress.measure.runtimes import RUNTIMES
from conftest import write_yaml

TOKEN = "test-token-" + "x" * 24
SPACE = {  # no fine-tuning: one latency measurement per trial, and seconds per trial
    "prune": {"none": {}, "channel_prune": {"ratio": {"low": 0.3, "high": 0.6, "step": 0.3}}},
    "quantize": {"none": {}, "int8_static": {"calibration_batches": 1}},
    "warm_start": [{"quantize": "int8_static"}, {"prune": {"channel_prune": {"ratio": 0.6}}}],
}


# the agent runs as on a lean target: the search's own packages cannot be imported there
LEAN_AGENT = """
import sys


class NotOnTheTarget:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "ray", "pydantic", "typer", "timm", "optuna", "yaml"}:
            raise ImportError(f"{name} is not installed on the target")


sys.meta_path.insert(0, NotOnTheTarget())
from autocompress.device.agent import main

main(sys.argv[1:])
"""


class AgentProcess:
    """The agent (as on a target without torch) on 127.0.0.1, a free port, a token file; killable and restartable."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder, self.token_file = folder, folder / "token"
        self.token_file.write_text(TOKEN)
        self.extra, self.port, self.proc = list(extra), 0, None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LEAN_AGENT, "--port", str(self.port), "--token-file", str(self.token_file),
             "--quiet", *self.extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.folder)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match, line + self.proc.stderr.read()
        self.url, self.port = match.group(1), int(match.group(2))
        wait_ready(self.url, TOKEN)

    def info(self) -> dict:
        return agent_info(self.url, TOKEN)

    def temp_folders(self) -> list[Path]:
        """Upload folders of this agent still on disk."""
        roots = list(Path(tempfile.gettempdir()).glob(f"acagent-{self.proc.pid}-*"))
        assert len(roots) == 1, roots
        assert not list((roots[0] / "cwd").iterdir())  # its working folder stays empty
        return [f for f in roots[0].iterdir() if f.name != "cwd"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10))
    return RUNTIMES["onnxruntime"].save(model, torch.randn(1, 3, 32, 32), folder / "m.onnx").path


def _config(tmp_path, tiny_config_dict, agent, **device):
    cfg = dict(tiny_config_dict)
    cfg["device"] = {**cfg["device"], "agent": agent.url, "agent_token_file": str(agent.token_file), **device}
    cfg["search_space"] = str(write_yaml(tmp_path / "space.yaml", SPACE))
    return load_config(write_yaml(tmp_path / "run.yaml", cfg))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def test_the_agent_imports_neither_torch_nor_ray():
    code = "import autocompress.device.agent, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import autocompress.cli, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # `autocompress agent` goes through it


def test_the_agent_command_line():
    from autocompress.device.agent import exposure_warning

    for command in (["-m", "autocompress.cli", "agent"], ["-m", "autocompress.device.agent"]):
        done = subprocess.run([sys.executable, *command, "--max-mb", "0"], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip() == "error: --max-mb: 0.0 must be above 0 (MB)"
    done = subprocess.run([sys.executable, "-m", "autocompress.cli", "agent", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--token-file" in done.stdout and "--max-mb" in done.stdout
    assert exposure_warning("127.0.0.1", 8470) is None and exposure_warning("::1", 8470) is None
    assert exposure_warning("0.0.0.0", 8470).startswith("WARNING: listening on 0.0.0.0:8470, reachable from other machines")


def test_every_latency_of_a_search_comes_from_the_agent(tmp_path, tiny_config_dict, agent):
    before = agent.info()
    config = _config(tmp_path, tiny_config_dict, agent)
    Search(config=config, run_dir=tmp_path / "out").search()
    run = tmp_path / "out"
    base, records = json.loads((run / "base.json").read_text()), _records(run)
    assert [r["state"] for r in records] == ["complete"] * 3
    for record in [base, *records]:
        source = record["latency_source"]
        assert source["agent"] == agent.url and source["machine"]["hostname"] == socket.gethostname()
        lat = record["latency"]
        assert lat["calls"] == 20 and lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    for r in records:  # each trial timed side by side with the base, in the same request
        assert r["base_latency_same_window"]["calls"] == 20
        assert r["latency_vs_base"] == pytest.approx(r["metrics"]["latency_ms"] / r["base_latency_same_window"]["median_ms"],
                                                     abs=1e-3)
    after = agent.info()
    assert after["measurements"] - before["measurements"] == 1 + len(records)  # the base, then one per trial
    assert json.loads((run / "machine.json").read_text())["agents"][agent.url]["cpu"] == after["machine"]["cpu"]
    assert agent.temp_folders() == []  # the agent kept nothing


def test_a_wrong_token_is_refused_and_nothing_is_measured(tmp_path, tiny_config_dict, agent, onnx_model):
    before = agent.info()
    with pytest.raises(AgentError, match=r"refused the token \(401\)"):
        measure_on_agents([agent.url], "wrong-" + TOKEN, runtime="onnxruntime", models={"trial": [onnx_model]},
                          example=np.zeros((1, 3, 32, 32), np.float32), warmup=1, repeats=1, rounds=1, threads=1,
                          timeout=30)
    with pytest.raises(AgentError, match="401"):
        agent_info(agent.url, "wrong-" + TOKEN)
    after = agent.info()
    assert after["measurements"] == before["measurements"] and after["refused"] == before["refused"] + 1
    (tmp_path / "bad").write_text("wrong-" + TOKEN)
    config = _config(tmp_path, tiny_config_dict, agent, agent_token_file=str(tmp_path / "bad"))
    with pytest.raises(UserError, match=rf"^device.agent: agent {re.escape(agent.url)} refused the token \(401\)"):
        Search(config=config, run_dir=tmp_path / "out").validate()


def test_an_openvino_ir_is_timed_by_the_agent(agent, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    ir = RUNTIMES["openvino"].save(model, torch.randn(1, 3, 32, 32), tmp_path / "model.xml")
    latency, source = measure_on_agents([agent.url], TOKEN, runtime="openvino", models={"trial": ir.files, "base": ir.files},
                                        example=np.zeros((2, 3, 32, 32), np.float32), warmup=1, repeats=3, rounds=2,
                                        threads=1, timeout=60)
    assert set(latency) == {"trial", "base"} and latency["trial"].calls == 6 and len(latency["base"].round_medians_ms) == 2
    assert source["agent"] == agent.url and "openvino" in source["machine"]["runtimes"]


def _post(url: str, body: bytes | None, length: int, *, expect: bool, token: str = TOKEN) -> tuple[int, dict]:
    """A raw POST /measure: headers, then the body only if ``body`` is given (and, with ``expect``, after 100)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (f"POST /measure HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n")
        sock.sendall(head.encode())
        fp = sock.makefile("rb")
        status = int(fp.readline().split()[1])
        if status == 100:
            fp.readline()
            sock.sendall(body)
            status = int(fp.readline().split()[1])
        headers = {}
        while (line := fp.readline().strip()):
            key, _, value = line.decode().partition(":")
            headers[key.lower()] = value.strip()
        return status, json.loads(fp.read(int(headers["content-length"])))


def _request(parts: list[tuple[str, bytes]], runtime: str = "onnxruntime") -> bytes:
    example = np.zeros((1, 3, 32, 32), "<f4").tobytes()
    header = {"protocol": 1, "runtime": runtime, "threads": 1, "warmup": 1, "repeats": 1, "rounds": 1,
              "input": {"shape": [1, 3, 32, 32], "dtype": "float32"}, "models": ["trial"],
              "parts": [{"kind": "input", "size": len(example)}]
              + [{"model": "trial", "kind": kind, "size": len(data)} for kind, data in parts]}
    return encode_header(header) + example + b"".join(data for _, data in parts)


def _external_data_model(folder: Path, location: str) -> bytes:
    """An ONNX model (1x3x32x32 -> sum) whose weight is stored outside the file, at ``location``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 3, 32, 32), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(folder / "ext.onnx"), save_as_external_data=True, location="weights.data",
                    size_threshold=0)
    model = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    return model.SerializeToString()


def test_oversized_and_non_model_uploads_are_refused(agent, tmp_path):
    before = agent.info()
    huge = 600 * 10**6  # over the default --max-mb 512: refused from the headers, no body is ever sent
    assert _post(agent.url, None, huge, expect=True)[0] == 413
    status, answer = _post(agent.url, None, huge, expect=False)
    assert status == 413 and "over this agent's limit of 512.0 MB (--max-mb)" in answer["error"]
    assert _post(agent.url, None, huge, expect=True, token="nope")[0] == 401

    import pickle
    import zipfile

    zipped = tmp_path / "model.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weights": [1, 2, 3]}))
    for kind, data, runtime, words in [
            ("onnx", pickle.dumps({"not": "a model"}), "onnxruntime", "a pickle"),
            ("onnx", zipped.read_bytes(), "onnxruntime", "a zip archive"),
            ("xml", zipped.read_bytes(), "openvino", "a zip archive"),
            ("onnx", b"#!/bin/sh\nrm -rf /\n", "onnxruntime", "an executable")]:
        parts = [(kind, data)] + ([("bin", b"")] if runtime == "openvino" else [])
        body = _request(parts, runtime)
        status, answer = _post(agent.url, body, len(body), expect=True)
        assert status == 415 and words in answer["error"], answer
    body = _request([("onnx", b"\x08\x07" + b"\xff" * 200)])  # looks like protobuf, is not a model: ONNX Runtime says no
    status, answer = _post(agent.url, body, len(body), expect=True)
    assert status == 422 and "could not load it" in answer["error"]
    (agent.folder / "weights.data").write_bytes(np.ones(3 * 32 * 32, "<f4").tobytes())  # where the agent was started
    for location in ("weights.data", "../../../../etc/hostname"):  # a model naming files to read on the agent
        body = _request([("onnx", _external_data_model(tmp_path, location))])
        status, answer = _post(agent.url, body, len(body), expect=True)
        assert status == 422 and "could not load it" in answer["error"], answer
    after = agent.info()
    assert after["measurements"] == before["measurements"] and after["refused"] == before["refused"] + 10
    assert agent.temp_folders() == []


def test_a_killed_agent_fails_the_trial_and_a_restarted_one_is_used_again(tmp_path, tiny_config_dict):
    proc = AgentProcess(tmp_path)
    try:
        config = _config(tmp_path, tiny_config_dict, proc)
        url = proc.url

        def on_event(kind, payload):  # in-process trials run at "start": kill before trial 1, restart before trial 2
            if kind == "start" and payload["number"] == 1:
                proc.kill()
            elif kind == "start" and payload["number"] == 2:
                proc.start()

        Search(config=config, run_dir=tmp_path / "out", on_event=on_event).search()
        records = _records(tmp_path / "out")
        assert [r["state"] for r in records] == ["complete", "fail", "complete"]
        assert records[1]["reason"].startswith(f"agent {url} unreachable: ")
        assert records[1]["agent_error"] == url
        assert records[2]["latency_source"]["agent"] == url and proc.port == int(url.rsplit(":", 1)[1])
        assert proc.info()["measurements"] == 1  # the restarted agent measured trial 2
    finally:
        proc.stop()


LONG_CLIENT = """
import sys
import numpy as np
from autocompress.device.client import AgentError, measure_on_agents
try:
    measure_on_agents([sys.argv[1]], sys.argv[2], runtime="onnxruntime", models={"trial": [sys.argv[3]]},
                      example=np.zeros((1, 3, 32, 32), np.float32), warmup=0, repeats=100_000, rounds=100, threads=1,
                      timeout=60)
    print("measured")
except AgentError as err:
    print(err)
"""


def test_an_agent_killed_mid_measurement_or_too_slow_fails_with_the_reason(tmp_path, onnx_model):
    proc = AgentProcess(tmp_path)
    try:  # another process (as a Ray worker would be) starts a long measurement
        client = subprocess.Popen([sys.executable, "-c", LONG_CLIENT, proc.url, TOKEN, str(onnx_model)],
                                  stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not proc.info()["busy"]:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)
        # one measurement at a time: this client queues at the agent, and gives up at its timeout
        with pytest.raises(AgentError, match=rf"^agent {proc.url} did not answer within 0.5s \(device.agent_timeout\)$"):
            measure_on_agents([proc.url], TOKEN, runtime="onnxruntime", models={"trial": [onnx_model]},
                              example=np.zeros((1, 3, 32, 32), np.float32), warmup=0, repeats=1, rounds=1, threads=1,
                              timeout=0.5)
        killed = Path(tempfile.gettempdir()).glob(f"acagent-{proc.proc.pid}-*")
        proc.kill()
        out, _ = client.communicate(timeout=30)
        assert out.strip() == f"agent {proc.url} closed the connection without answering"
        left = list(killed)
        assert len(left) == 1 and list(left[0].glob("request-*/part*"))  # SIGKILL left the upload behind ...
        proc.start()
        assert not left[0].exists()  # ... and the next agent removed it
    finally:
        proc.stop()


class _Garbage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers = {"/info": b"not json at all", "/measure": json.dumps({"latency": {"trial": {"median_ms": -1}}}).encode()}

    def _answer(self):
        body = self.answers[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._answer()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer()

    def log_message(self, *args):
        pass


def test_an_agent_answering_garbage_is_an_error_naming_it(onnx_model):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(AgentError, match=rf"agent {url} returned garbage"):
            agent_info(url, TOKEN)
        with pytest.raises(AgentError, match=rf"agent {url} returned garbage"):
            measure_on_agents([url], TOKEN, runtime="onnxruntime", models={"trial": [onnx_model]},
                              example=np.zeros((1, 3, 32, 32), np.float32), warmup=1, repeats=1, rounds=1, threads=1,
                              timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_agent_config_is_checked_before_any_work(tmp_path, tiny_config_dict):
    with pytest.raises(UserError, match=r"^device.agent: the torch runtime \(.pt2\) cannot be measured by an agent"):
        load_config(None, {"device.agent": "http://127.0.0.1:8470", "device.runtime": "torch"})
    with pytest.raises(UserError, match=r"^device.agent: not an agent URL: 'https://host:1'; use http://HOST:PORT"):
        load_config(None, {"device.agent": "https://host:1"})
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN)
    cfg = {**tiny_config_dict, "device": {**tiny_config_dict["device"], "agent": f"http://127.0.0.1:{port}",
                                          "agent_token_file": str(tmp_path / "token")}}
    search = Search(config=load_config(write_yaml(tmp_path / "run.yaml", cfg)), run_dir=tmp_path / "out")
    with pytest.raises(UserError, match=rf"^device.agent: agent http://127.0.0.1:{port} unreachable: .*; start "):
        search.validate()
    assert not (tmp_path / "out").exists()
