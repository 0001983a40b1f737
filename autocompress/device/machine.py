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
    info["versions"] = _versions("torch", "timm", "optuna", "ray", "onnxruntime", "torch-pruning", "autocompress")
    return info


def _versions(*packages: str) -> dict[str, str]:
    """Installed versions of those of ``packages`` that are installed."""
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "i8mm", "sve", "bf16")  # x86 and Arm instruction sets int8 / bf16 kernels use


def cpu_info() -> dict:
    """CPU model, vendor and the int8-relevant flags, from ``lscpu``, else ``/proc/cpuinfo`` (no torch)."""
    fields: dict[str, str] = {}
    if shutil.which("lscpu"):
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
        except (OSError, subprocess.SubprocessError):
            fields = {}
    if not fields.get("Flags"):
        try:
            text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "flags", "features", "vendor_id") and value.strip():
                name = {"model name": "Model name", "flags": "Flags", "features": "Flags", "vendor_id": "Vendor ID"}[key]
                fields.setdefault(name, value.strip())
    flags = set(fields.get("Flags", "").split())
    return {"cpu": fields.get("Model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("Vendor ID"), "int8_flags": sorted(flags & set(CPU_FLAGS))}


def describe_target(runtimes: list[str]) -> dict:
    """The device a latency agent measures on: host, CPU, cores and runtime versions (no torch).

    Args:
        runtimes: The runtimes it offers (``onnxruntime``, ``openvino``).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info = {"hostname": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), **cpu_info(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "runtimes": list(runtimes)}
    info["versions"] = _versions("onnxruntime", "openvino", "numpy", "autocompress")
    return info
