"""Triton's system shared-memory extension, protocol-neutral (the HTTP routes and the gRPC service both use it).

A co-located client puts a tensor in a POSIX shared-memory object (`/dev/shm/<key>`), registers a named region of
it (key, offset, byte_size), and names the region in an input's or output's parameters
(`shared_memory_region`, `shared_memory_byte_size`, optional `shared_memory_offset`) instead of sending bytes.

Isolation: Triton keeps one region namespace per server. Here every region belongs to an *owner* string the
transport derives with `owner_of`: a digest of the API key the client presented, plus the optional client tag
(`x-ppdeploy-client` header / metadata) so clients sharing one key can still keep apart. A client sees, uses and
unregisters only its own regions; two owners may both register "input0". Without an API key and a tag every
client is one owner, as in Triton. Registering maps the object read-write (outputs are written into it); the
mapping lives until unregistered and until no input array still views it. Thread-safe.

The raw layout (also gRPC's raw contents): little-endian, row-major; BYTES as a 4-byte little-endian length
before each element. `from_raw` / `to_raw` convert it.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ppdeploy.core.errors import InputError
from ppdeploy.serve.kserve import from_raw, to_raw

SHM_DIR = "/dev/shm"
MAX_REGIONS_PER_OWNER = 256
PARAM_REGION = "shared_memory_region"
PARAM_SIZE = "shared_memory_byte_size"
PARAM_OFFSET = "shared_memory_offset"


class SharedMemoryError(InputError):
    """A region that cannot be registered or used as asked (HTTP 400, gRPC INVALID_ARGUMENT)."""


class RegionExists(SharedMemoryError):
    """Registering a name this owner already uses (gRPC ALREADY_EXISTS)."""


class RegionNotFound(SharedMemoryError):
    """Status of a region this owner has not registered (HTTP 404, gRPC NOT_FOUND)."""

    status = 404


def owner_of(api_key: str | bytes | None, client_tag: str | bytes | None = None) -> str:
    """The region namespace of a request: the presented API key (hashed, so it is never kept) and the client tag."""
    if isinstance(api_key, str):
        api_key = api_key.encode()
    if isinstance(client_tag, bytes):
        client_tag = client_tag.decode("latin-1")
    digest = hashlib.sha256(api_key).hexdigest()[:16] if api_key else "-"
    return f"{digest}/{(client_tag or '').strip()[:128]}"


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    buffer: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SharedMemoryError(f"{what} must be a non-negative integer, got {value!r}")
    return value


class SharedMemoryRegistry:
    """Registered system shared-memory regions, by owner then name."""

    def __init__(self, shm_dir: str = SHM_DIR):
        self._dir = shm_dir
        self._regions: dict[str, dict[str, Region]] = {}
        self._lock = threading.Lock()

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> None:
        if not isinstance(name, str) or not name:
            raise SharedMemoryError("a shared-memory region needs a non-empty name")
        offset = _int(offset, f"offset of region '{name}'")
        byte_size = _int(byte_size, f"byte_size of region '{name}'")
        if byte_size == 0:
            raise SharedMemoryError(f"byte_size of region '{name}' must be positive")
        path = self._path(key)
        with self._lock:
            mine = self._regions.setdefault(owner, {})
            if name in mine:
                raise RegionExists(f"shared memory region '{name}' is already registered")
            if len(mine) >= MAX_REGIONS_PER_OWNER:
                raise SharedMemoryError(f"{len(mine)} regions are registered already, the most one client may hold")
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as exc:
                raise SharedMemoryError(f"unable to open shared memory region '{name}' (key '{key}'): "
                                        f"{exc.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise SharedMemoryError(f"region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                                            f"{size} bytes of shared memory key '{key}'")
                buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            mine[name] = Region(name, key, offset, byte_size, buffer)

    def unregister(self, owner: str, name: str | None = None) -> None:
        """One region, or every region of `owner` when `name` is empty. An unknown name is no error (Triton's)."""
        with self._lock:
            mine = self._regions.get(owner, {})
            gone = list(mine.values()) if not name else [r for r in [mine.get(name)] if r is not None]
            for r in gone:
                del mine[r.name]
            if not mine:
                self._regions.pop(owner, None)
        for r in gone:
            _release(r)

    def status(self, owner: str, name: str | None = None) -> list[dict]:
        with self._lock:
            mine = self._regions.get(owner, {})
            if name:
                if name not in mine:
                    raise RegionNotFound(f"unable to find system shared memory region: '{name}'")
                return [mine[name].status()]
            return [r.status() for r in mine.values()]

    def view(self, owner: str, name: str, offset: int, byte_size: int, where: str) -> memoryview:
        """`byte_size` bytes at `offset` inside region `name` (offsets relative to the region, as Triton's)."""
        offset = _int(offset, f"{where}: {PARAM_OFFSET}")
        byte_size = _int(byte_size, f"{where}: {PARAM_SIZE}")
        with self._lock:
            region = self._regions.get(owner, {}).get(name)
            if region is None:
                raise SharedMemoryError(f"{where}: unable to find shared memory region '{name}'")
            if offset + byte_size > region.byte_size:
                raise SharedMemoryError(f"{where}: offset {offset} + byte_size {byte_size} exceeds the "
                                        f"{region.byte_size} bytes of shared memory region '{name}'")
            start = region.offset + offset
            return memoryview(region.buffer)[start:start + byte_size]

    def close(self) -> None:
        with self._lock:
            regions = [r for mine in self._regions.values() for r in mine.values()]
            self._regions.clear()
        for r in regions:
            _release(r)

    def _path(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise SharedMemoryError("a shared-memory region needs a key")
        bare = key[1:] if key.startswith("/") else key
        if not bare or "/" in bare or bare in (".", ".."):
            raise SharedMemoryError(f"shared memory key '{key}' is not a POSIX shared-memory name")
        return os.path.join(self._dir, bare)


def _release(region: Region) -> None:
    try:
        region.buffer.close()
    except BufferError:
        pass  # an input array still views it; the mapping goes when that array does


# -- inputs and outputs naming a region ------------------------------------------------------------------------
def names_region(params: Mapping[str, Any]) -> bool:
    return PARAM_REGION in params


def _region_params(params: Mapping[str, Any], where: str) -> tuple[str, int, int]:
    name = params.get(PARAM_REGION)
    if not isinstance(name, str) or not name:
        raise SharedMemoryError(f"{where}: {PARAM_REGION} must be a region name")
    if PARAM_SIZE not in params:
        raise SharedMemoryError(f"{where}: {PARAM_REGION} needs {PARAM_SIZE}")
    return name, params[PARAM_SIZE], params.get(PARAM_OFFSET, 0)


def read_input(registry: SharedMemoryRegistry, owner: str, params: Mapping[str, Any], datatype: str,
               shape: tuple[int, ...], where: str) -> np.ndarray:
    """The input an input's parameters point at (a view of the region; the batcher copies when it batches)."""
    name, size, offset = _region_params(params, where)
    return from_raw(registry.view(owner, name, offset, size, where), datatype, shape, where)


@dataclass
class OutputTarget:
    """Where an output goes: checked when the request arrives (a bad region fails before inference)."""

    region: str
    offset: int
    byte_size: int
    view: memoryview

    def write(self, arr: np.ndarray, datatype: str, where: str) -> int:
        """Copy `arr` into the region; returns the bytes written."""
        data = to_raw(arr, datatype)
        n = len(data)
        if n > self.byte_size:
            raise SharedMemoryError(f"{where}: {PARAM_SIZE} {self.byte_size} of region '{self.region}' is too small "
                                    f"for the output's {n} bytes")
        self.view[:n] = data
        return n

    def parameters(self) -> dict:
        return {PARAM_REGION: self.region, PARAM_SIZE: self.byte_size, PARAM_OFFSET: self.offset}


def output_target(registry: SharedMemoryRegistry, owner: str, params: Mapping[str, Any], where: str) -> OutputTarget:
    name, size, offset = _region_params(params, where)
    return OutputTarget(name, offset, size, registry.view(owner, name, offset, size, where))


__all__ = ["OutputTarget", "Region", "RegionExists", "RegionNotFound", "SharedMemoryError", "SharedMemoryRegistry",
           "names_region", "output_target", "owner_of", "read_input"]
