"""`TensorRTRunner`: runs a deserialized engine, one execution context + stream per optimization profile."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.backends.tensorrt.artifact import (
    atomic_write_bytes,
    meta_io,
    meta_profiles,
)
from ppdeploy.backends.tensorrt.cuda import CudaMemory, StagedBuffers
from ppdeploy.backends.tensorrt.library import LibraryTraits
from ppdeploy.backends.tensorrt.profiles import envelope, nbytes, select_profile
from ppdeploy.core.errors import BuildError
from ppdeploy.core.shapes import InputRange
from ppdeploy.core.tensors import IOSpec

log = logging.getLogger("ppdeploy.backends.tensorrt.backend")


def profile_buffer_sizes(io: IOSpec, profile: Mapping[str, InputRange], output_bytes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per tensor for one profile: inputs at the profile's max shape, outputs at the engine's bound."""
    sizes = {t.name: nbytes(profile[t.name].max, t.dtype) for t in io.inputs}
    sizes.update({t.name: int(output_bytes[t.name]) for t in io.outputs})
    return sizes


@dataclass
class _ProfileSlot:
    context: Any
    stream: int
    buffers: StagedBuffers
    events: list[Any]


class TensorRTRunner(Runner):
    """Runs a deserialized engine. One execution context + stream per optimization profile, created on first use;
    each owns device and pinned buffers sized for its profile's max shapes, bound by name once."""

    backend = "tensorrt"

    def __init__(self, trt: Any, traits: LibraryTraits, engine: Any, meta: Mapping[str, Any],
                 cuda: CudaMemory, runtime_cache: Any = None, runtime_cache_path: Path | None = None):
        self._profiles = meta_profiles(meta)
        super().__init__(meta_io(meta), envelope(self._profiles))
        self.backend = traits.flavour.name
        self._trt, self._traits, self._engine, self._cuda = trt, traits, engine, cuda
        self._runtime_cache, self._runtime_cache_path = runtime_cache, runtime_cache_path
        self._slots: dict[int, _ProfileSlot] = {}
        self._lock = threading.Lock()

    def _slot(self, index: int) -> _ProfileSlot:
        slot = self._slots.get(index)
        if slot is not None:
            return slot
        if self._runtime_cache is not None:
            config = self._engine.create_runtime_config()
            config.set_runtime_cache(self._runtime_cache)
            context = self._engine.create_execution_context(config)
        else:
            context = self._engine.create_execution_context()
        if context is None:
            raise BuildError(f"{self._traits.flavour.label} could not create an execution context")
        stream = self._cuda.stream()
        if not context.set_optimization_profile_async(index, stream):
            raise BuildError(f"could not select optimization profile {index}")
        profile = self._profiles[index]
        for name, rng in profile.items():
            context.set_input_shape(name, tuple(rng.max))
        out_bytes = {}
        for spec in self.io.outputs:
            bound = int(context.get_max_output_size(spec.name)) if hasattr(context, "get_max_output_size") else -1
            if bound <= 0:
                shape = tuple(context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise BuildError(f"output '{spec.name}' has a data-dependent shape; not supported by this runner")
                bound = nbytes(shape, spec.dtype)
            out_bytes[spec.name] = bound
        buffers = StagedBuffers.allocate(self._cuda, profile_buffer_sizes(self.io, profile, out_bytes))
        for name, ptr in buffers.device.items():
            context.set_tensor_address(name, ptr)
        slot = _ProfileSlot(context, stream, buffers, [self._cuda.event() for _ in range(4)])
        self._slots[index] = slot
        return slot

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = select_profile(self._profiles, {n: a.shape for n, a in feeds.items()})
        with self._lock:
            slot = self._slot(index)
            cuda, ctx, stream, bufs, ev = self._cuda, slot.context, slot.stream, slot.buffers, slot.events
            cuda.record(ev[0], stream)
            for name, arr in feeds.items():
                ctx.set_input_shape(name, arr.shape)
                cuda.h2d(bufs.device[name], bufs.host_ptr[name], bufs.stage_in(name, arr), stream)
            cuda.record(ev[1], stream)
            if not ctx.execute_async_v3(stream):
                raise BuildError(f"{self._traits.flavour.label} execute_async_v3 failed")
            cuda.record(ev[2], stream)
            shapes = {t.name: tuple(ctx.get_tensor_shape(t.name)) for t in self.io.outputs}
            for spec in self.io.outputs:
                cuda.d2h(bufs.host_ptr[spec.name], bufs.device[spec.name], nbytes(shapes[spec.name], spec.dtype), stream)
            cuda.record(ev[3], stream)
            cuda.synchronize(stream)
            out = {t.name: bufs.stage_out(t.name, shapes[t.name], t.dtype) for t in self.io.outputs}
            self.last_timings.update(h2d=cuda.elapsed_ms(ev[0], ev[1]), compute=cuda.elapsed_ms(ev[1], ev[2]),
                                     d2h=cuda.elapsed_ms(ev[2], ev[3]), profile=float(index))
        return out

    def close(self) -> None:
        with self._lock:
            if self._runtime_cache is not None and self._runtime_cache_path is not None:
                try:
                    atomic_write_bytes(self._runtime_cache_path, memoryview(self._runtime_cache.serialize()).tobytes())
                except Exception as exc:
                    log.warning("could not save the TensorRT-RTX runtime cache: %s", exc)
                self._runtime_cache = None
            for slot in self._slots.values():
                slot.context = None
            self._slots.clear()
            self._engine = None
            if self._cuda is not None:
                self._cuda.close()
