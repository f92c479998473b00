"""CUDA memory: the only CUDA calls the runner makes (cuda-python's runtime API; no torch needed), every return code
checked; and the per-profile staged buffers (device buffer + pinned host buffer per tensor)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.backends.tensorrt.profiles import nbytes
from ppdeploy.core.errors import BuildError, InputError
from ppdeploy.core.lazy import install_hint


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return None
    return cudart


class CudaError(BuildError):
    """A CUDA runtime call failed."""


class CudaMemory:
    """Streams, device buffers, pinned host buffers, async copies and events, every return code checked."""

    def __init__(self, device: int = 0):
        rt = import_cudart()
        if rt is None:
            raise CudaError(f"cuda-python is not installed ({install_hint('cuda')}); the TensorRT runner needs it")
        self.rt = rt
        self._check(rt.cudaSetDevice(device), "cudaSetDevice")
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []

    def _check(self, result: Any, what: str) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            msg = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{what} failed: {getattr(err, 'name', err)} ({msg})")
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def device_alloc(self, size: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(1, size)), f"cudaMalloc({size})"))
        self._device_ptrs.append(ptr)
        return ptr

    def host_alloc(self, size: int) -> tuple[int, np.ndarray]:
        """Pinned (page-locked) host memory and a uint8 numpy view of it: async copies need pinned memory."""
        ptr = int(self._check(self.rt.cudaMallocHost(max(1, size)), f"cudaMallocHost({size})"))
        self._host_ptrs.append(ptr)
        view = np.ctypeslib.as_array((ctypes.c_uint8 * max(1, size)).from_address(ptr))
        return ptr, view

    def h2d(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync(H2D)")

    def d2h(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync(D2H)")

    def d2d(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync(D2D)")

    def event(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: int) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._device_ptrs:
            self.rt.cudaFree(ptr)
        for ptr in self._host_ptrs:
            self.rt.cudaFreeHost(ptr)
        self._device_ptrs, self._host_ptrs = [], []


@dataclass
class StagedBuffers:
    """Device buffer + pinned host staging buffer per tensor, sized for the largest shape one profile allows."""

    device: dict[str, int] = field(default_factory=dict)
    host_ptr: dict[str, int] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)

    @classmethod
    def allocate(cls, cuda: CudaMemory, sizes: Mapping[str, int]) -> "StagedBuffers":
        bufs = cls()
        for name, size in sizes.items():
            bufs.device[name] = cuda.device_alloc(size)
            bufs.host_ptr[name], bufs.host[name] = cuda.host_alloc(size)
            bufs.capacity[name] = size
        return bufs

    def stage_in(self, name: str, array: np.ndarray) -> int:
        size = array.nbytes
        if size > self.capacity[name]:  # cannot happen after select_profile; guards memory safety anyway
            raise InputError(f"input '{name}' needs {size} bytes, its buffer holds {self.capacity[name]}")
        self.host[name][:size] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return size

    def stage_out(self, name: str, shape: Sequence[int], dtype: str) -> np.ndarray:
        size = nbytes(shape, dtype)
        return self.host[name][:size].view(np.dtype(dtype)).reshape(tuple(shape)).copy()
