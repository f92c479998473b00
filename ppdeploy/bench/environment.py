"""Where and when a benchmark ran: machine, CPU, library versions, date. Every result file records it,
because a number without its machine cannot be compared with anything."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
from importlib import metadata
from typing import Any

from ppdeploy.core.device import cpu_info, gpu_info

# Distribution names whose versions decide benchmark numbers.
PACKAGES = (
    "ppdeploy", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "paddlepaddle", "paddle2onnx",
    "opencv-python-headless", "tensorrt-rtx-cu13-bindings", "rapidocr-paddle", "starlette", "uvicorn", "uvloop",
    "httptools", "httpx", "grpcio", "tritonclient",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def total_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


def describe() -> dict[str, Any]:
    cpu = cpu_info()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "arch": cpu["arch"],
        "usable_cores": usable_cores(),
        "load_average_at_start": load_average(),
        "memory_gib": total_memory_gib(),
        "gpus": gpu_info(),
        "versions": package_versions(),
    }


def markdown(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))
    gpus = "; ".join(f"{g['name']} (cc {g['compute_capability']}, driver {g['driver']})" for g in env.get("gpus") or []) or "none"
    lines = [
        f"- Date: {env.get('date')}",
        f"- CPU: {env.get('cpu_model')} ({env.get('arch')}), {env.get('usable_cores')} usable cores, "
        f"flags: {', '.join(env.get('cpu_flags') or []) or 'n/a'}",
        f"- Memory: {env.get('memory_gib')} GiB; load average at start: {env.get('load_average_at_start')}",
        f"- GPU: {gpus}",
        f"- OS: {env.get('os')}, Python {env.get('python')}",
        f"- Versions: {versions}",
    ]
    return "\n".join(lines)
