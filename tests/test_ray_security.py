"""Trust boundaries of the Ray executor: a local Ray that listens on loopback only, with Ray's
token authentication on, and plugin code shipped to workers checked against its SHA-256 before
every use (a tampered copy is rewritten, never imported).

The search test runs ``autocompress search --executor ray`` in a subprocess so that it starts
its own local Ray the way the CLI does (not the session's ``ray_cluster``), with
``RAY_AUTH_MODE`` unset and a fresh ``HOME``.
"""

import hashlib
import importlib.util
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autocompress.execution.ray import PLUGIN_DIR, _materialise, _sha256
from conftest import write_yaml

# Blocks a trial until the test says so (a file appears), writing where it was imported from first.
GATE_PLUGIN = '''
"""Holds trial ``hold`` until ``<folder>/release`` exists; says which file it was imported from."""
import json
import os
import time
from pathlib import Path

from autocompress import Plugin, PluginConfig, Stage


class Gate(Plugin):
    name = "gate"
    stage = Stage.PRUNE
    changes_structure = False

    class Config(PluginConfig):
        folder: str = "."
        hold: int = 0
        tag: int = 0  # trials with another tag are other configurations (not served from the cache)

    search_space = {"folder": ["."], "hold": [0], "tag": [0]}

    def apply(self, model, ctx):
        folder = Path(self.config.folder)
        number = next((int(part) for part in reversed(Path(ctx.workdir).parts) if part.isdigit()), None)
        tmp = folder / f".started-{number}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "file": __file__}))
        os.replace(tmp, folder / f"started-{number}")
        deadline = time.time() + 120
        while number == self.config.hold and not (folder / "release").exists() and time.time() < deadline:
            time.sleep(0.05)
        return model
'''


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _ray_processes(driver: psutil.Process, ray_dir: str) -> list[psutil.Process]:
    """Every process of this run's Ray: the driver's descendants, and whatever names its temp folder."""
    procs = {}
    try:
        for p in [driver, *driver.children(recursive=True)]:
            procs[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if any(ray_dir in arg for arg in p.info["cmdline"] or ()):
            procs[p.pid] = p
    return list(procs.values())


def _listening(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    out = []
    for p in procs:
        try:
            name = p.name()
            conns = p.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        out += [(p.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _wait(condition, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"search exited ({proc.returncode}) too early:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_local_ray_listens_on_loopback_only_with_auth_and_checked_plugins(tmp_path, tiny_config_dict):
    gate = tmp_path / "gate"
    gate.mkdir()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    source = GATE_PLUGIN.encode()
    (plugins / "gate.py").write_bytes(source)
    # group-writable: the worker must not import it in place, but its own checked copy
    os.chmod(plugins / "gate.py", 0o664)
    space = {"prune": {"gate": {"folder": [str(gate)], "hold": [0], "tag": [0, 1]}},
             "warm_start": [{"prune": {"gate": {"folder": str(gate), "hold": 0, "tag": tag}}} for tag in (0, 1)]}
    data = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
            "plugins_dir": str(plugins)}
    data["model"] = {**tiny_config_dict["model"], "train_epochs": 0}  # the base as is: the test is about Ray
    data["search"] = {**tiny_config_dict["search"], "trials": 2}
    config = write_yaml(tmp_path / "run.yaml", data)
    run, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # the CLI's default: auth on
    env.update(HF_HUB_OFFLINE="1", HOME=str(home))
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", str(config), "--out", str(run),
                                 "--executor", "ray", "--workers", "1", "-q"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: (gate / "started-0").exists(), proc, log)
        ray_dir = os.path.realpath(run / "ray")
        listening = _listening(_ray_processes(psutil.Process(proc.pid), ray_dir))
        print(f"{len(listening)} listening sockets:", *listening, sep="\n  ")
        assert listening, "no listening socket found: the test would prove nothing"
        assert {name for _, name, _, _ in listening} >= {"gcs_server", "raylet"}, listening
        exposed = [s for s in listening if not _loopback(s[2])]
        assert not exposed, f"Ray listens beyond loopback: {exposed}"

        # Ray's folders sit inside one only this user can enter; token authentication is on
        assert stat.S_IMODE(os.stat(ray_dir).st_mode) == 0o700
        gcs = next(p for p in _ray_processes(psutil.Process(proc.pid), ray_dir) if p.name() == "gcs_server")
        assert gcs.environ().get("RAY_AUTH_MODE") == "token"
        token = gcs.environ().get("RAY_AUTH_TOKEN", "")
        assert len(token) == 64, "not this run's own random token"
        port = next(port for _, name, _, port in listening if name == "gcs_server")
        probe = ("from ray._raylet import GcsClient\n"
                 f"print('KEYS', len(GcsClient(address='127.0.0.1:{port}').internal_kv_keys(b'', None, timeout=5)))")
        clients = {"anonymous": {**env, "RAY_AUTH_MODE": "disabled"},
                   "wrong token": {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                   "the token": {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}}
        running = {who: subprocess.Popen([sys.executable, "-c", probe], env=client_env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
                   for who, client_env in clients.items()}  # side by side: each is a Python importing Ray
        try:
            answers = {who: (client.wait(timeout=60), client.stdout.read()) for who, client in running.items()}
        finally:
            for client in running.values():
                if client.poll() is None:
                    client.kill()
                    client.wait()
        for who, (code, text) in answers.items():
            print(f"GCS client with {who}: exit {code}: {text.strip()[-160:]}")
        assert answers["the token"][0] == 0 and "KEYS" in answers["the token"][1]
        for who in ("anonymous", "wrong token"):  # refused for want of the token, not for anything else
            assert answers[who][0] != 0 and "token authentication is enabled" in answers[who][1].lower(), who
        assert not (home / ".ray").exists(), "a token was written to the user's home"

        # the plugin ran from its checked copy in the run's private folder, which a tamperer then overwrites
        started = json.loads((gate / "started-0").read_text())
        copy = Path(started["file"])
        assert copy.read_bytes() == source and copy.parent.parent.parent.name == PLUGIN_DIR, copy
        assert str(copy).startswith(ray_dir)
        for folder in (copy.parent, copy.parent.parent, copy.parent.parent.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        copy.write_text(f"open({str(gate / 'pwned')!r}, 'w').close()\n" + GATE_PLUGIN)
        (gate / "release").touch()
        _wait(lambda: (gate / "started-1").exists(), proc, log)
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
        # trial 1 ran after the tampering: its worker rewrote the copy from the shipped source first
        assert json.loads((gate / "started-1").read_text())["file"] == str(copy)
        assert copy.read_bytes() == source, "the tampered copy was not rewritten from the shipped source"
        assert not (gate / "pwned").exists(), "tampered plugin code ran"
        rows = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
        assert [r["state"] for r in rows] == ["complete", "complete"], rows
        assert not (home / ".ray").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ray_dir = os.path.realpath(run / "ray")
        if not ray_dir.startswith(str(tmp_path)):  # the short /tmp/acray-* folder pytest would not remove
            shutil.rmtree(ray_dir, ignore_errors=True)


def _ship(path: Path, source: bytes) -> list[dict]:
    return [{"path": str(path), "sha256": _sha256(source), "source": source}]


def _import(path: str):
    spec = importlib.util.spec_from_file_location(f"shipped_{time.time_ns()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tampered_shipped_plugin_copy_is_rewritten_before_use(tmp_path):
    good = b"WHO = 'shipped'\n"
    evil = b"WHO = 'tampered'\n"
    driver_path = tmp_path / "driver" / "p.py"  # not on this "worker": the shipped copy is used
    private = tmp_path / "private"
    private.mkdir(mode=0o777)
    os.chmod(private, 0o777)
    shipped = _ship(driver_path, good)

    [first] = _materialise([str(driver_path)], shipped, lambda: private)
    assert Path(first).read_bytes() == good and Path(first).parent.parent == private
    assert stat.S_IMODE(Path(first).parent.stat().st_mode) == 0o700
    assert _import(first).WHO == "shipped"

    Path(first).write_bytes(evil)  # tampered in place
    [again] = _materialise([str(driver_path)], shipped, lambda: private)
    assert again == first and Path(again).read_bytes() == good
    assert _import(again).WHO == "shipped"

    decoy = tmp_path / "decoy.py"  # swapped for a link to someone's file: replaced, the target untouched
    decoy.write_bytes(evil)
    Path(first).unlink()
    Path(first).symlink_to(decoy)
    [again] = _materialise([str(driver_path)], shipped, lambda: private)
    assert not Path(again).is_symlink() and Path(again).read_bytes() == good and decoy.read_bytes() == evil


def test_the_driver_path_is_used_only_when_it_matches_and_only_its_owner_can_change_it(tmp_path):
    source = b"WHO = 'driver'\n"
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    path = folder / "p.py"
    path.write_bytes(source)
    os.chmod(path, 0o644)
    private = tmp_path / "private"
    private.mkdir()
    shipped = _ship(path, source)
    assert _materialise([str(path)], shipped, lambda: private) == [str(path)]

    os.chmod(path, 0o664)  # others could swap it between the check and the import
    [copy] = _materialise([str(path)], shipped, lambda: private)
    assert copy != str(path) and Path(copy).read_bytes() == source
    os.chmod(path, 0o644)
    os.chmod(folder, 0o777)
    assert _materialise([str(path)], shipped, lambda: private) == [copy]
    os.chmod(folder, 0o755)

    path.write_bytes(b"WHO = 'edited since'\n")  # differs from what the driver shipped
    assert _materialise([str(path)], shipped, lambda: private) == [copy]
    assert Path(copy).read_bytes() == source


def test_shipped_code_that_does_not_match_its_hash_is_refused(tmp_path):
    path = tmp_path / "p.py"
    bad = [{"path": str(path), "sha256": hashlib.sha256(b"other").hexdigest(), "source": b"WHO = 1\n"}]
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        _materialise([str(path)], bad, lambda: tmp_path)
    with pytest.raises(ValueError, match="was not shipped"):
        _materialise([str(path)], [], lambda: tmp_path)


def test_when_one_file_cannot_be_used_in_place_all_are_copied_side_by_side(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    shared, user = folder / "shared.py", folder / "user.py"  # user.py loads shared.py next to its __file__
    shared.write_bytes(b"X = 1\n")
    user.write_bytes(b"X = 2\n")
    os.chmod(shared, 0o644)
    os.chmod(user, 0o666)
    shipped = [*_ship(shared, b"X = 1\n"), *_ship(user, b"X = 2\n")]
    private = tmp_path / "private"
    private.mkdir()
    copies = _materialise([str(shared), str(user)], shipped, lambda: private)
    assert [Path(c).name for c in copies] == ["shared.py", "user.py"]
    assert Path(copies[0]).parent == Path(copies[1]).parent != folder
