import functools
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture
def tiny_config_dict(tmp_path):
    """A run config small enough for a test: tiny timm model, a slice of digits, short timing."""
    return {
        "model": {"name": "test_resnet", "img_size": 32, "train_epochs": 2, "train_lr": 0.01},
        "data": {"source": "digits", "max_samples": 400, "batch_size": 32},
        "budget": {"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": 50.0},
        "device": {"threads": 1, "warmup": 3, "repeats": 10, "rounds": 2},
        # like early stopping, the proxy gate makes a search's trial count depend on the digits model's
        # training, which varies run to run: off here, on in the tests that are about it
        "search": {"sampler": "random", "trials": 3, "timeout": None, "seed": 0, "early_stop": "none",
                   "proxy_gate": None},
    }


def in_fresh_process(test):
    """Runs a test in a new interpreter, as ``autocompress search`` runs a search in-process.

    For tests that interrupt a running step with a signal, so that what earlier tests left in the
    suite's process cannot decide them: once ~290 tests had loaded a Ray driver, OpenVINO, NNCF and
    every runtime into it, the step's SIGALRM killed the suite with SIGSEGV (a stale alternate signal
    stack; fixed in autocompress.trial.watchdog, and tested on its own in test_step_timeout.py).
    """
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get("AUTOCOMPRESS_TEST_INNER") == test.__name__:
            return test(*args, **kwargs)
        node = f"{Path(inspect.getfile(test)).resolve().relative_to(ROOT)}::{test.__name__}"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node], cwd=ROOT,
                              env={**os.environ, "AUTOCOMPRESS_TEST_INNER": test.__name__},
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout.splitlines()[-1], proc.stdout[-2000:]

    return wrapper


FAILING_PLUGIN = '''
from autocompress import Plugin, Stage


class Explode(Plugin):
    """Always fails: the run gets a failed trial and must go on."""

    name = "explode"
    stage = Stage.DISTILL
    changes_structure = False

    def apply(self, model, ctx):
        raise RuntimeError("kaboom in apply")
'''


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Runs the real ``autocompress`` entry point (with its error handling) in-process: exit code, stdout, stderr."""
    from autocompress.cli import main

    monkeypatch.setattr(sys, "argv", ["autocompress", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_yaml(path: Path, data) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the whole session (Ray has no local_mode); yields its GCS address.

    Temp and log files stay in a short folder under /tmp (unix socket paths must be short).
    """
    import shutil
    import tempfile

    import ray

    from autocompress.execution.ray import _loopback_node

    tmp = tempfile.mkdtemp(prefix="acrt-", dir="/tmp")
    with _loopback_node():  # like the product's local Ray: nothing listens beyond this machine
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp, logging_level="ERROR",
                 _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_torch_thread_for_plugin_tests(request):
    """Plugin tests run tiny convolutions: one intra-op thread is as fast, and on a loaded
    2-core machine two are up to 50x slower."""
    if "plugins" not in Path(str(request.node.path)).parts:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
