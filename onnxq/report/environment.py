"""Facts about the machine a measurement ran on, for reports.

``collect_environment()`` never raises: a fact that cannot be read is ``None``. Everything is read when
asked (no work at import), and the GPU is queried through ``nvidia-smi`` only if it is on PATH, with a
timeout, so a machine without a GPU costs nothing and a hung driver cannot hang a benchmark.
The process-memory readers at the end (current RSS, resettable peak RSS, this process's GPU memory)
serve the benchmarker.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

NVIDIA_SMI_TIMEOUT_S = 10


def collect_environment() -> dict[str, Any]:
    """A flat-ish dict: cpu, cores, memory, os, python, library versions, ORT providers, GPUs (or None)."""
    return {
        "cpu_model": _safe(cpu_model),
        "cpu_cores_logical": _safe(os.cpu_count),
        "cpu_cores_usable": _safe(lambda: len(os.sched_getaffinity(0))),
        "memory_total_bytes": _safe(memory_total_bytes),
        "os": _safe(platform.platform),
        "python": _safe(lambda: f"{platform.python_implementation()} {platform.python_version()}"),
        "versions": {name: _safe(lambda n=name: package_version(n)) for name in _PACKAGES},
        "onnxruntime_package": _safe(onnxruntime_package),
        "ort_providers": _safe(_ort_providers),
        "gpus": _safe(nvidia_gpus),
    }


_PACKAGES = ("onnxq", "onnx", "onnxruntime", "numpy")


def _safe(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; any failure means the fact is unknown (None), never an error in the caller."""
    try:
        return fn()
    except Exception:
        return None


def cpu_model() -> str | None:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_total_bytes() -> int | None:
    """Physical memory from /proc/meminfo or sysconf."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def package_version(name: str) -> str | None:
    """Installed version of ``name``; onnxruntime also answers for onnxruntime-gpu."""
    if name == "onnxruntime":
        pkg = onnxruntime_package()
        return metadata.version(pkg) if pkg else None
    if name == "onnxq":
        from onnxq import __version__

        return __version__
    return metadata.version(name)


def onnxruntime_package() -> str | None:
    """Which distribution provides onnxruntime: onnxruntime, onnxruntime-gpu, ... (first installed)."""
    for dist in ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            metadata.version(dist)
            return dist
        except metadata.PackageNotFoundError:
            continue
    return None


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _nvidia_smi(args: list[str], runner: Callable[..., Any] | None) -> str | None:
    """nvidia-smi's stdout for ``args``, or None: not installed, failed, or hung past the timeout."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = (runner or subprocess.run)(
            [exe, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def nvidia_gpus(runner: Callable[..., Any] | None = None) -> list[dict[str, Any]] | None:
    """Name, driver and memory of each NVIDIA GPU via nvidia-smi; None when there is none or it fails."""
    out = _nvidia_smi(
        ["--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader,nounits"], runner
    )
    return None if out is None else parse_gpu_csv(out)


def parse_gpu_csv(text: str) -> list[dict[str, Any]] | None:
    """Rows of 'index, name, driver, memory MiB' as printed by nvidia-smi --format=csv,noheader,nounits."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        index, name, driver, mem = parts
        gpus.append(
            {
                "index": int(index) if index.isdigit() else None,
                "name": name,
                "driver": driver,
                "memory_total_bytes": int(float(mem) * 2**20) if _is_number(mem) else None,
            }
        )
    return gpus or None


def gpu_memory_used_bytes(device_id: int = 0, runner: Callable[..., Any] | None = None) -> int | None:
    """Memory in use on GPU ``device_id``, all processes together (nvidia-smi); None if unknown.

    Device-wide rather than per process: inside containers nvidia-smi often cannot map processes to
    PIDs, so a per-process figure would silently be missing exactly where GPUs are rented.
    """
    out = _nvidia_smi(
        [f"--id={device_id}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], runner
    )
    if out is None or not _is_number(out.strip()):
        return None
    return int(float(out.strip()) * 2**20)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def describe_environment(env: dict[str, Any]) -> str:
    """One line for tables: 'CPU (N cores), OS, Python x, onnxruntime y [, GPU name]'."""
    versions = env.get("versions") or {}
    gpus = env.get("gpus") or []
    parts = [
        f"{env.get('cpu_model') or 'unknown CPU'} ({env.get('cpu_cores_usable') or '?'} usable cores)",
        str(env.get("os") or sys.platform),
        f"Python {str(env.get('python') or '?').split()[-1]}",
        f"onnxruntime {versions.get('onnxruntime') or '?'}",
    ]
    parts += [f"GPU {g['name']} (driver {g['driver']})" for g in gpus]
    return ", ".join(parts)


# --- memory of this process (for benchmarks) ---------------------------------------------------


def current_rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc/self/statm), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident memory since the last reset (VmHWM), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
