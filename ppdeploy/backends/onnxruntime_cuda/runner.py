"""`OnnxRuntimeCUDARunner`: IO binding, one session + binding + device buffers per input-shape bucket."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from ppdeploy.backends.base import BuildOptions, Runner
from ppdeploy.backends.onnxruntime_cuda.settings import CudaSettings
from ppdeploy.backends.onnxruntime_cuda.shapes import (
    batch_bucket,
    crop_outputs,
    feeds_batch,
    pad_axes,
    pad_batch,
)
from ppdeploy.core.errors import InputError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.core.tensors import IOSpec, TensorSpec, dims, numpy_dtype

ort = lazy_import("onnxruntime", install="onnxruntime-gpu")


def io_spec(session) -> IOSpec:
    def spec(t) -> TensorSpec:
        return TensorSpec(t.name, numpy_dtype(t.type), dims(t.shape))

    return IOSpec(tuple(spec(t) for t in session.get_inputs()), tuple(spec(t) for t in session.get_outputs()))


class _ShapeSlot:
    """Everything bound for one input-shape bucket: its session, IO binding, device input buffers and (after the
    first run) the device output buffers ORT allocated, all reused by every later call with this shape."""

    def __init__(self, session, inputs: dict[str, Any]):
        self.session = session
        self.binding = session.io_binding()
        self.inputs = inputs
        self.outputs: list[Any] | None = None


class OnnxRuntimeCUDARunner(Runner):
    """IO-binding runner. Why a session per input shape (`session_per_shape`, default on): ORT's CUDA EP re-plans
    every convolution whenever a node sees a shape different from its previous call, even for shapes it has seen
    before, which costs far more than the run itself (bench/gpu/README.md). One session per shape keeps every node
    on one shape; sessions
    share nothing but GPU memory (weights are a few MB). Batch sizes are padded up to powers of two
    (`batch_buckets`) so a dynamic batcher produces a handful of shapes, not one per batch size."""

    backend = "onnxruntime-cuda"

    def __init__(self, make_session: Callable[[], Any], options: BuildOptions, settings: CudaSettings,
                 device: str = "cuda"):
        first = make_session()
        super().__init__(io_spec(first), options.shapes)
        self._make_session = make_session
        self._spare: Any | None = first  # serves the first shape, so a single-shape model creates one session
        self._settings = settings
        self._device = device
        self._slots: OrderedDict[tuple, _ShapeSlot] = OrderedDict()
        self._graph_shape: tuple | None = None
        self._lock = threading.Lock()
        self.sessions_created = 1
        batchable = {t.name for t in self.io.inputs if t.shape and t.shape[0] is None}
        outputs_batched = all(t.shape and t.shape[0] is None for t in self.io.outputs)
        self._batchable = batchable if settings.batch_buckets and outputs_batched else set()
        limits = [options.shapes.ranges[n].max[0] for n in batchable if options.shapes and n in options.shapes.ranges]
        self._batch_limit = min(limits) if limits else None

    def _slot(self, key: tuple, feeds: dict[str, np.ndarray]) -> _ShapeSlot:
        found = self._slots.get(key)
        if found is not None:
            self._slots.move_to_end(key)
            return found
        if self._spare is not None:
            session, self._spare = self._spare, None
        elif self._settings.session_per_shape:
            session = self._make_session()
            self.sessions_created += 1
        else:
            session = next(iter(self._slots.values())).session
        dev = int(self._settings.device_id)
        inputs = {n: ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, self._device, dev)
                  for n, a in feeds.items()}
        found = self._slots[key] = _ShapeSlot(session, inputs)
        while len(self._slots) > int(self._settings.max_cached_shapes):
            self._slots.popitem(last=False)
        return found

    def _bind(self, slot: _ShapeSlot) -> None:
        b = slot.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, value in slot.inputs.items():
            b.bind_ortvalue_input(name, value)
        if slot.outputs is None:  # first run at this shape: ORT allocates the outputs on the device; we keep them
            for name in self.output_names:
                b.bind_output(name, self._device, int(self._settings.device_id))
        else:
            for name, value in zip(self.output_names, slot.outputs):
                b.bind_ortvalue_output(name, value)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            t0 = time.perf_counter()
            feeds, real = pad_batch(feeds, self._batchable, self._batch_limit) if self._batchable else (feeds, -1)
            feeds, originals = pad_axes(feeds, self._settings.pad_multiple) if self._settings.pad_multiple else (feeds, {})
            key = tuple((n, a.shape, a.dtype.str) for n, a in sorted(feeds.items()))
            if self._settings.cuda_graph:
                if self._graph_shape is None:
                    self._graph_shape = key
                elif key != self._graph_shape:
                    raise InputError(f"this runner replays a CUDA graph captured for {self._graph_shape}; got {key}",
                                     hint="use fixed-size inputs or load without cuda_graph")
            slot = self._slot(key, feeds)
            for name, arr in feeds.items():
                slot.inputs[name].update_inplace(arr)  # synchronous host->device copy into the reused buffer
            t1 = time.perf_counter()
            first = slot.outputs is None
            self._bind(slot)
            try:
                slot.session.run_with_iobinding(slot.binding)  # returns after the stream is synchronized
            except RuntimeError:
                if not (first and len(self._slots) > 1):
                    raise
                # Out of GPU resources while starting a new shape: release every other slot's session, retry once.
                import gc

                for other in [k for k in self._slots if k != key]:
                    del self._slots[other]
                gc.collect()
                slot.session.run_with_iobinding(slot.binding)
            t2 = time.perf_counter()
            values = slot.binding.get_outputs()
            if first:
                slot.outputs = list(values)
            out = {name: value.numpy() for name, value in zip(self.output_names, values)}
            out = crop_outputs(out, feeds, originals)
            if real >= 0:
                out = {k: (v[:real] if v.ndim and v.shape[0] == feeds_batch(feeds, self._batchable) else v)
                       for k, v in out.items()}
            t3 = time.perf_counter()
        self.last_timings.update(h2d=(t1 - t0) * 1e3, compute=(t2 - t1) * 1e3, d2h=(t3 - t2) * 1e3)
        return out

    def warm_up(self, profile) -> list[tuple[int, ...]]:
        """Run zeros at the profile's opt shape for each batch bucket up to its max batch; returns the shapes run.
        Does nothing unless the profile covers every input."""
        names = [t.name for t in self.io.inputs]
        if not profile or any(n not in profile.ranges for n in names):
            return []
        ranges = {n: profile.ranges[n] for n in names}
        batches = [ranges[names[0]].opt[0]]
        if self._batchable:
            top = min(r.max[0] for n, r in ranges.items() if n in self._batchable)
            low = max(r.min[0] for n, r in ranges.items() if n in self._batchable)
            # Only batches the profile admits: a fixed profile (min = max, e.g. for CUDA graphs) warms that one.
            batches = sorted({batch_bucket(b, top) for b in (1 << i for i in range(top.bit_length() + 1)) if b <= top}
                             | {top})
            batches = [b for b in batches if b >= low] or [top]
        done = []
        dtypes = {t.name: t.dtype for t in self.io.inputs}
        for b in batches:
            feeds = {n: np.zeros((b, *r.opt[1:]) if n in self._batchable else r.opt, dtypes[n]) for n, r in ranges.items()}
            self.infer(feeds)
            done.append(tuple(feeds[names[0]].shape))
        return done

    @property
    def _sets(self) -> OrderedDict:  # buffer sets by shape (kept for tests and benchmarks)
        return self._slots

    def close(self) -> None:
        with self._lock:
            self._slots.clear()
            self._spare = None
