"""What the benchmark ran on: CPU, cores, memory, GPU, load, library versions, provider."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["machine_info", "load_average"]

PACKAGES = ("onnxruntime-gpu", "onnxruntime", "numpy", "pyzmq", "msgpack", "opencv-python-headless", "torch",
            "hdrhistogram", "eclipse-ecal", "eclipse-zenoh", "tqdm")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[dict]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(provider: str | None = None, provider_note: str | None = None) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        available = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        available = []
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _mem_gib(),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": versions,
        "onnxruntime_providers_available": available,
        "provider": provider,
        "provider_note": provider_note,
        "load_average_start": load_average(),
    }
