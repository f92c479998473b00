"""What machine we are on, for engine cache keys and `ppdeploy doctor`.

A compiled engine is only valid on the device it was built for: the CPU's instruction set for OpenVINO's
compiled blobs, the GPU model, compute capability and driver for TensorRT. These functions say which.
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from typing import Any

# CPU flags that change which kernels a backend picks (and whether bf16/int8 pay off).
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "fma")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    return {"arch": platform.machine(), "model": model, "flags": sorted(f for f in INTERESTING_FLAGS if f in flags)}


def cpu_supports_bf16() -> bool:
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def gpu_info() -> list[dict[str, Any]]:
    """One dict per NVIDIA GPU this process may use (name, compute capability, driver, memory); empty without one.

    Ordered and filtered like CUDA_VISIBLE_DEVICES (indices or UUIDs), so ``gpu_info()[0]`` is the GPU that CUDA
    calls device 0 — on a host with mixed GPUs an engine must be keyed on the card it will actually run on.
    The physical index and UUID are used for that mapping only and stay out of the result: engines are portable
    between identical cards, so the cache key must not name one card.
    """
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap,driver_version,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    rows = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 6:
            rows.append(parts)
    return [{"name": r[2], "compute_capability": r[3], "driver": r[4], "memory_mib": r[5]}
            for r in visible_rows(rows, os.environ.get("CUDA_VISIBLE_DEVICES"))]


def visible_rows(rows: list[list[str]], visible: str | None) -> list[list[str]]:
    """Apply CUDA_VISIBLE_DEVICES to nvidia-smi rows of (index, uuid, ...): CUDA's order, stopping at the first
    entry that names no GPU (as CUDA does); unset means all."""
    if visible is None:
        return rows
    chosen = []
    for token in (t.strip() for t in visible.split(",")):
        match = [r for r in rows if token and (r[0] == token or (token.startswith("GPU-") and r[1].startswith(token)))]
        if not match:
            break
        chosen.append(match[0])
    return chosen


def identity(device: str, gpu_index: int = 0) -> dict[str, Any]:
    """The part of an engine cache key that pins an engine to hardware."""
    if device == "gpu":
        gpus = gpu_info()
        return {"gpu": gpus[gpu_index] if len(gpus) > gpu_index else None}
    info = cpu_info()
    return {"cpu": {"arch": info["arch"], "model": info["model"], "flags": info["flags"]}}
