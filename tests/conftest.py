import os
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
        "search": {"sampler": "random", "trials": 3, "timeout": None, "seed": 0},
    }


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

    tmp = tempfile.mkdtemp(prefix="acrt-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
