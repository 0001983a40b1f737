"""What machine a run measured on: timings compare only within one machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess


def describe(threads: int) -> dict:
    """CPU model and flags that matter for int8 (from ``lscpu``), threads and library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": threads}
    if shutil.which("lscpu"):
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("Flags", "").split())
        info["cpu"] = fields.get("Model name", platform.processor())
        info["vendor"] = fields.get("Vendor ID")
        info["int8_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"})
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    versions = {}
    for pkg in ("torch", "timm", "optuna", "ray", "onnxruntime", "torch-pruning", "autocompress"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info
