"""Shared-memory arenas: anonymous memfd files mapped in both processes, that hold a call's tensors.

An arena has no name in /dev/shm, so nothing is left behind whichever process is killed, and Docker's 64 MB
/dev/shm limit does not apply. Tensors are laid out one after another, each ALIGN-aligned (`plan`).
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from ppdeploy.core.errors import ConfigError

ALIGN = 64  # every tensor starts on a cache line (and on any dtype's alignment)
_GROWTH = 1.25  # a grown arena gets this much headroom over the request that outgrew it


@dataclass
class Arena:
    id: int
    size: int
    mm: mmap.mmap
    leased: bool = False


def release(arena: Arena) -> None:
    arena.leased = False


def close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # arrays still view it: the mapping goes when the last of them is collected
        pass


def make_arena(label: str, size: int) -> tuple[int, mmap.mmap, int]:
    """A fresh memfd of at least `size` bytes, mapped here: (fd, mapping, size). The caller closes the fd."""
    size = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
    # The name shows in /proc only; the kernel takes at most 249 bytes of it (a label's characters may be several).
    name = f"ppdeploy-arena-{label}".encode()[:200].decode(errors="ignore")
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd, mm, size


def nbytes(dtype: str, shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def grown(need: int) -> int:
    return int(need * _GROWTH)


def plan(items) -> tuple[list, int]:
    """[(name, dtype, shape, offset)] for tensors laid out one after another, each ALIGN-aligned; total bytes."""
    layout, off = [], 0
    for name, arr in items:
        dtype = arr.dtype.str if arr.dtype.kind != "V" else arr.dtype.name  # bfloat16 is "V2" as a type string
        layout.append((name, dtype, tuple(arr.shape), off))
        off += -(-arr.nbytes // ALIGN) * ALIGN
    return layout, off


def require_memfd() -> None:
    if not hasattr(os, "memfd_create"):
        raise ConfigError("engine_process needs Linux (memfd_create); run the engines in-process on this system")


__all__ = ["ALIGN", "Arena", "close_map", "grown", "make_arena", "nbytes", "plan", "release", "require_memfd"]
