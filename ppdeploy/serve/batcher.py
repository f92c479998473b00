"""Per-model dynamic batcher (asyncio), Triton's dynamic batching in a few hundred lines.

Requests wait in a bounded queue, grouped by *shape key* (every non-batch dim of every input, plus dtype;
axes the config allows to be padded are left out of the key). A worker per model instance takes the group
whose oldest request waited longest, up to `max_batch_size` rows, and runs it through
`ppdeploy.serve.merge.run_merged` in a thread (the event loop never blocks on inference): concatenated along axis
0, one runner call, outputs split back by row counts, each request's future resolved. While a worker is busy, new requests pile up, so the next batch is bigger: under load
batches form even with `max_queue_delay_ms: 0`, and an idle server adds no delay.

Guarantees (each has a test):
- every accepted request gets exactly one answer: its outputs, or an error;
- the outputs equal what the runner gives for that request alone (a failing batch is re-run one request at a
  time, so one bad request cannot fail its neighbours);
- a full queue refuses at once (`QueueFull`, with a retry-after estimate), it never blocks;
- a request still queued at its deadline is answered `RequestTimeout`; one that is already running finishes;
- a request beyond the model's size limits is refused before it runs (`RequestTooLarge`, 413), and an engine
  error caused by the request's own shape is answered 4xx, not 500 (`_engine_error`);
- a request whose client went away before it ran is dropped from the batch;
- `drain()` stops new requests and returns once everything queued and running has been answered.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Protocol, Sequence

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec, validate_inputs
from ppdeploy.deploy.trial import trial_shapes
from ppdeploy.deploy.verify import generate_inputs
from ppdeploy.serve.merge import NotSplittable, Run, run_merged

log = logging.getLogger("ppdeploy.serve.batcher")

_QUEUED, _RUNNING, _DONE = 0, 1, 2
# Start watching for a client disconnect only once a request has waited this long: a request answered sooner
# needs no watcher (and would run anyway; dropping is for requests stuck behind a queue).
WATCH_DISCONNECT_AFTER_S = 0.005


class ServingError(PPDeployError):
    """A request the server accepted but could not answer with outputs; `status` is the HTTP status to use."""

    status = 503


class QueueFull(ServingError):
    status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ServingError):
    status = 503


class BatcherClosed(ServingError):
    status = 503


class ClientGone(ServingError):
    status = 499  # nginx's "client closed request"; nobody reads it, but the access log does


class InferenceFailed(ServingError):
    status = 500  # only for a runner that fails on a request that passed validation: a real server-side fault


class RequestTooLarge(InputError):
    """A request beyond a model's size limits (config `limits`), or one the engine could not allocate."""

    status = 413


# An engine error that names shapes or memory: on a request whose shape never ran, the request's fault (4xx).
_ALLOC_ERROR = re.compile(r"bad_alloc|failed to allocate|out of memory|cannot allocate|allocation fail", re.I)
_SHAPE_ERROR = re.compile(r"shape|dimension|\bdims?\b|broadcast|reshape|invalid_argument|size mismatch|"
                          r"out of range|kernel size|padding", re.I)


@dataclass(frozen=True)
class BatcherSettings:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    default_timeout_ms: float = 0.0  # 0: none
    pad: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # A batch expected to take at most this long runs on the event loop itself instead of the inference thread:
    # for a sub-millisecond model the two thread hops cost as much as the inference (only with one instance).
    inline_max_ms: float = 1.0
    # Per request (config `limits`): elements of one input, and the estimated bytes of all outputs (413 beyond).
    max_input_elements: int = 1 << 24
    max_output_bytes: int = 256 << 20

    @classmethod
    def from_config(cls, cfg) -> "BatcherSettings":
        """From a `ppdeploy.repository.config.ModelConfig`."""
        db = cfg.dynamic_batching
        limits = getattr(cfg, "limits", None)
        sizes = {} if limits is None else dict(max_input_elements=limits.max_input_elements,
                                               max_output_bytes=limits.max_output_bytes)
        return cls(cfg.max_batch_size, db.max_queue_delay_ms, tuple(db.preferred_batch_sizes), db.max_queue_size,
                   db.default_timeout_ms, {k: tuple(v) for k, v in db.pad.items()}, db.inline_max_ms, **sizes)


@dataclass
class BatchTimings:
    """Nanoseconds of one execution, Triton's stages: gather inputs, run the model, split outputs."""

    size: int  # rows
    requests: int
    input_ns: int
    infer_ns: int
    output_ns: int


class BatchObserver(Protocol):
    """What the batcher reports (ppdeploy.serve.metrics.ModelMetrics implements it)."""

    def on_batch(self, timings: BatchTimings, queue_ns: Sequence[int]) -> None: ...

    def on_queue_depth(self, depth: int) -> None: ...


class _NullObserver:
    def on_batch(self, timings: BatchTimings, queue_ns: Sequence[int]) -> None:
        pass

    def on_queue_depth(self, depth: int) -> None:
        pass


@dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued_ns: int
    deadline_ns: int | None
    state: int = _QUEUED


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_ns: int
    timings: BatchTimings


class DynamicBatcher:
    """Batches requests for one model. Create, `await start()` on the serving loop, then `await infer(feeds)`."""

    def __init__(self, name: str, runners: Sequence[Runner], settings: BatcherSettings = BatcherSettings(),
                 *, shapes: ShapeProfile | None = None, observer: BatchObserver | None = None):
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self.settings = settings
        self._runners = list(runners)
        self.io: IOSpec = runners[0].io
        # The config's profile, and the engine's own for the inputs the config leaves open (a built TensorRT or
        # OpenVINO profile): a shape outside it is refused here, not by the engine.
        engine_shapes = getattr(runners[0], "_shapes", None)
        ranges = dict(engine_shapes.ranges) if isinstance(engine_shapes, ShapeProfile) else {}
        ranges.update((shapes or ShapeProfile()).ranges)
        self._shapes = ShapeProfile(ranges)
        # output name -> most bytes seen per input element: sizes the outputs whose dims the inputs don't give
        self._out_ratio: dict[str, float] = {}
        self._unsized = any(d is None for t in self.io.outputs for d in t.shape[1:])
        self._observer = observer or _NullObserver()
        self._batch_axis_ok = all(t.shape and t.shape[0] is None for t in self.io.inputs)
        # A model whose batch dim is fixed (or absent) cannot concatenate requests.
        self.max_rows = settings.max_batch_size if self._batch_axis_ok else 1
        self._pad = {n: tuple(a) for n, a in settings.pad.items()}
        self._pending: dict[tuple, deque[_Request]] = {}
        self._depth = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(len(self._runners), thread_name_prefix=f"infer-{name}")
        self._exec_s_avg = 0.0  # recent execution time, for Retry-After estimates
        self._row_ms_avg: float | None = None  # recent inference time per row, for the inline decision
        # (group key, rows) already run once. A first run of a shape can be slow on any backend (a GPU provider
        # re-plans its kernels: 0.4-1.3 s measured on the H100), so it never runs on the event loop.
        self._seen_shapes: set[tuple] = set()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._runners:
            await self._loop.run_in_executor(None, self._probe_sizes)
        self._wakeup = asyncio.Event()
        self._workers = [asyncio.create_task(self._worker(r), name=f"batcher-{self.name}-{i}")
                         for i, r in enumerate(self._runners)]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def batch_axis(self) -> bool:
        """True when every input has a dynamic dim 0, so requests can be concatenated along it."""
        return self._batch_axis_ok

    @property
    def queue_depth(self) -> int:
        return self._depth

    @property
    def accepting(self) -> bool:
        return not self._closing and self._loop is not None

    async def drain(self) -> None:
        """Stop accepting; return when every queued and running request has been answered."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def close(self) -> None:
        await self.drain()
        self._executor.shutdown(wait=True)
        for r in self._runners:
            try:
                r.close()
            except Exception:  # closing is best effort; a backend that fails to free memory must not block exit
                log.exception("closing a runner of %s failed", self.name)

    # -- requests -------------------------------------------------------------------------------------------
    def check(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Validate one request (names, dtypes, fixed dims, profile, batch size); returns (feeds, rows)."""
        feeds = validate_inputs(self.io, feeds, self._shapes)
        rows_by_input = {n: a.shape[0] for n, a in feeds.items() if a.ndim}
        rows_set = set(rows_by_input.values())
        if len(rows_set) > 1:
            raise InputError(f"inputs disagree on the batch size (dim 0): {rows_by_input}")
        rows = rows_set.pop() if rows_set else 1
        if self._batch_axis_ok and rows > self.settings.max_batch_size:
            raise InputError(f"batch of {rows} exceeds max_batch_size {self.settings.max_batch_size} of model '{self.name}'",
                             hint="split the request, or raise max_batch_size in the model's config.yaml")
        self._check_size(feeds, rows)
        return feeds, rows

    def _check_size(self, feeds: dict[str, np.ndarray], rows: int) -> None:
        """The model's `limits`: elements per input, and the outputs' estimated bytes (`estimate_output_bytes`)."""
        limit = self.settings.max_input_elements
        for name, arr in feeds.items():
            if arr.size > limit:
                raise RequestTooLarge(
                    f"input '{name}' of shape {list(arr.shape)} has {arr.size} elements, more than model "
                    f"'{self.name}' accepts per request ({limit})",
                    hint="send a smaller input, or raise limits.max_input_elements in the model's config.yaml")
        need = self.estimate_output_bytes(feeds, rows)
        if need > self.settings.max_output_bytes:
            shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in feeds.items())
            raise RequestTooLarge(
                f"the outputs of model '{self.name}' for input {shapes} would take about {need / 2**20:.0f} MiB, "
                f"more than its limit of {self.settings.max_output_bytes / 2**20:.0f} MiB per request",
                hint="send a smaller input, or raise limits.max_output_bytes in the model's config.yaml")

    def estimate_output_bytes(self, feeds: Mapping[str, np.ndarray], rows: int) -> int:
        """The outputs' bytes for `feeds`: each output's declared shape with dim 0 as the request's rows and every
        other dynamic dim taken from an input of the same rank that has it dynamic too (a det map from its image);
        an output whose dims stay unknown (a rec's time steps) is scaled from the most bytes per input element it
        has taken on any call, the start-up probe (`start`) included."""
        in_elements = sum(int(a.size) for a in feeds.values())
        total = 0
        for out in self.io.outputs:
            dims = self._output_dims(out, feeds, rows)
            if dims is not None:
                total += math.prod(dims) * _itemsize(out.dtype)
            else:
                total += int(self._out_ratio.get(out.name, 0.0) * in_elements)
        return total

    def _output_dims(self, out, feeds: Mapping[str, np.ndarray], rows: int) -> list[int] | None:
        """`out`'s dims for `feeds` as far as the declared shapes tell them; None when one stays unknown."""
        match = None
        for t in self.io.inputs:
            arr = feeds.get(t.name)
            if arr is not None and arr.ndim == len(out.shape):
                match = (t, arr)
                break
        dims: list[int] = []
        for i, d in enumerate(out.shape):
            if d is None and i == 0 and self._batch_axis_ok:
                d = rows
            elif d is None and match is not None and match[0].shape[i] is None:
                d = int(match[1].shape[i])
            if d is None:
                return None
            dims.append(int(d))
        return dims

    def _probe_sizes(self) -> None:
        """One call at the trial shape (ppdeploy.deploy.trial) when an output's size cannot be read from its
        declared shape, so the first request is already held to `max_output_bytes`: a cold server would otherwise
        estimate 0 bytes for a rec's [N, T, C] output and accept a line 110 000 pixels wide."""
        feeds = generate_inputs(self.io, seed=0, shapes=trial_shapes(self.io, self._shapes))
        if all(self._output_dims(o, feeds, 1) is not None for o in self.io.outputs):
            return
        try:
            self._learn_sizes(feeds, self._runners[0].infer(feeds))
        except Exception as exc:  # the engine passed its trial at load; a failure here only leaves the estimate cold
            log.warning("model %s: the output-size probe failed (%s); sizes are learnt from the first requests",
                        self.name, exc)

    def _learn_sizes(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        in_elements = max(1, sum(int(a.size) for a in feeds.values()))
        for name, arr in outputs.items():
            ratio = getattr(arr, "nbytes", 0) / in_elements
            if ratio > self._out_ratio.get(name, 0.0):
                self._out_ratio[name] = ratio

    def _engine_error(self, exc: BaseException, req: _Request) -> PPDeployError:
        """A runner's own exception as the answer to `req`: the request's fault (4xx) when the engine could not
        allocate it, or named shapes on a shape that never ran; else a server fault (InferenceFailed, 500)."""
        if isinstance(exc, PPDeployError):
            return exc
        text = f"{type(exc).__name__}: {exc}"
        first = text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in req.feeds.items())
        if isinstance(exc, MemoryError) or _ALLOC_ERROR.search(text):
            return RequestTooLarge(f"model '{self.name}' could not allocate memory for input {shapes}: {first}",
                                   hint="send a smaller input")
        if (req.key, req.rows) not in self._seen_shapes and _SHAPE_ERROR.search(text):
            return InputError(f"model '{self.name}' cannot run input {shapes}: {first}",
                              hint="check the input's shape against the model metadata (GET /v2/models/<name>)")
        return InferenceFailed(f"model '{self.name}' failed: {exc}")

    def _key(self, feeds: dict[str, np.ndarray]) -> tuple:
        parts = []
        for name, arr in feeds.items():
            dims = arr.shape[1:]
            pad_axes = self._pad.get(name)
            if pad_axes:
                dims = tuple(-1 if (i + 1) in pad_axes else d for i, d in enumerate(dims))
            parts.append((name, arr.dtype.str, dims))
        return tuple(parts)

    async def infer(self, feeds: Mapping[str, np.ndarray], *, timeout_ms: float | None = None,
                    disconnected: Callable[[], Awaitable] | None = None) -> BatchResult:
        """Queue one request and wait for its outputs.

        `timeout_ms` (else the model's default) bounds the time spent *queued*; a request already running
        finishes. `disconnected` returns an awaitable that completes when the client goes away: a request still
        queued then is dropped. Raises InputError (bad request), QueueFull, RequestTimeout, BatcherClosed,
        ClientGone, InferenceFailed.
        """
        if self._closing or self._loop is None:
            raise BatcherClosed(f"model '{self.name}' is not accepting requests (server shutting down)")
        checked, rows = self.check(feeds)
        if self._depth >= self.settings.max_queue_size:
            raise QueueFull(f"model '{self.name}' queue is full ({self._depth} requests waiting)", self.retry_after_s())
        now = time.perf_counter_ns()
        timeout_ms = self.settings.default_timeout_ms if timeout_ms is None else timeout_ms
        deadline = now + int(timeout_ms * 1e6) if timeout_ms and timeout_ms > 0 else None
        req = _Request(checked, rows, self._key(checked), self._loop.create_future(), now, deadline)
        self._pending.setdefault(req.key, deque()).append(req)
        self._depth += 1
        self._observer.on_queue_depth(self._depth)
        self._wakeup.set()
        # Timers instead of a watcher task per request: most requests are answered before either fires, and a
        # cancelled timer costs next to nothing, while a task + asyncio.wait per request is measurable.
        timers = []
        watcher: list[asyncio.Task] = []
        if deadline is not None:
            timers.append(self._loop.call_later(
                timeout_ms / 1e3, self._abandon, req,
                RequestTimeout(f"request timed out after {timeout_ms:g} ms in the queue of model '{self.name}'")))
        if disconnected is not None:
            def watch() -> None:
                if req.state == _QUEUED:
                    watcher.append(asyncio.ensure_future(self._drop_when(req, disconnected())))

            timers.append(self._loop.call_later(WATCH_DISCONNECT_AFTER_S, watch))
        try:
            return await req.future
        except asyncio.CancelledError:
            self._abandon(req)
            raise
        finally:
            for t in timers:
                t.cancel()
            for w in watcher:
                w.cancel()

    async def _drop_when(self, req: _Request, disconnected: Awaitable) -> None:
        await disconnected
        self._abandon(req, ClientGone("client disconnected while the request was queued"))

    def _abandon(self, req: _Request, error: Exception | None = None) -> bool:
        """Take a queued request out of the batching (lazily: workers skip it). True if it had not started.

        With `error`, the request's waiter gets it as its answer; without, the waiter is the one giving up."""
        if req.state != _QUEUED:
            return False
        req.state = _DONE
        self._depth -= 1
        self._observer.on_queue_depth(self._depth)
        if not req.future.done():
            if error is not None:
                req.future.set_exception(error)
            else:
                req.future.cancel()
        return True

    def retry_after_s(self) -> int:
        batches_ahead = self._depth / max(1, self.max_rows) / max(1, len(self._runners))
        return max(1, math.ceil(batches_ahead * self._exec_s_avg))

    # -- batching -------------------------------------------------------------------------------------------
    def _oldest_group(self) -> tuple | None:
        best_key, best_t = None, None
        now = time.perf_counter_ns()
        for key, q in list(self._pending.items()):
            while q and (q[0].state != _QUEUED or self._expire(q[0], now)):
                q.popleft()
            if not q:
                del self._pending[key]
                continue
            if best_t is None or q[0].enqueued_ns < best_t:
                best_key, best_t = key, q[0].enqueued_ns
        return best_key

    def _expire(self, req: _Request, now: int) -> bool:
        if req.deadline_ns is not None and now >= req.deadline_ns and req.state == _QUEUED:
            self._abandon(req, RequestTimeout(f"request timed out after waiting in the queue of model '{self.name}'"))
            return True
        return False

    def _ready_rows(self, key: tuple) -> int:
        rows = 0
        for r in self._pending.get(key, ()):
            if r.state == _QUEUED:
                if rows + r.rows > self.max_rows:
                    break
                rows += r.rows
        return rows

    def _take(self, key: tuple) -> list[_Request]:
        q = self._pending[key]
        batch, rows = [], 0
        while q:
            r = q[0]
            if r.state != _QUEUED:
                q.popleft()
                continue
            if batch and rows + r.rows > self.max_rows:
                break
            q.popleft()
            r.state = _RUNNING
            batch.append(r)
            rows += r.rows
        if not q:
            del self._pending[key]
        self._depth -= len(batch)
        self._observer.on_queue_depth(self._depth)
        return batch

    async def _next_batch(self) -> list[_Request] | None:
        s = self.settings
        while True:
            key = self._oldest_group()
            if key is None:
                if self._closing:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            rows = self._ready_rows(key)
            if s.max_queue_delay_ms <= 0 or rows >= self.max_rows or rows in s.preferred_batch_sizes or self._closing:
                return self._take(key)
            head = self._pending[key][0]
            wait_s = (head.enqueued_ns + s.max_queue_delay_ms * 1e6 - time.perf_counter_ns()) / 1e9
            if wait_s <= 0:
                return self._take(key)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except asyncio.TimeoutError:
                pass

    async def _worker(self, runner: Runner) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                await self._execute(runner, batch)
            except Exception as exc:  # never lose a request: whatever went wrong, answer everyone in the batch
                log.exception("batch execution for %s failed unexpectedly", self.name)
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(InferenceFailed(f"inference failed: {exc}"))
            finally:
                # Other workers may be waiting on a group this one left behind.
                self._wakeup.set()

    def _inline(self, shape: tuple, rows: int) -> bool:
        limit = self.settings.inline_max_ms
        return (limit > 0 and len(self._runners) == 1 and self._row_ms_avg is not None
                and shape in self._seen_shapes and self._row_ms_avg * rows <= limit)

    async def _execute(self, runner: Runner, batch: list[_Request]) -> None:
        start = time.perf_counter_ns()
        rows = sum(r.rows for r in batch)
        shape = (batch[0].key, rows)
        run = functools.partial(run_merged, runner.infer, [r.feeds for r in batch], [r.rows for r in batch],
                                pad=self._pad, on_not_splittable=self._not_batchable)
        outcomes = run() if self._inline(shape, rows) else await self._loop.run_in_executor(self._executor, run)
        answered: dict[int, Run] = {}
        for r, outcome in zip(batch, outcomes):
            if outcome.error is not None:
                exc = outcome.error
                log.warning("model %s failed on a request: %s", self.name, exc)
                err = self._engine_error(exc, r)
                if not r.future.done():
                    r.future.set_exception(err)
            else:
                answered.setdefault(id(outcome.run), outcome.run)
                if self._unsized:
                    self._learn_sizes(r.feeds, outcome.outputs)
        for done in answered.values():
            members = [batch[i] for i in done.members]
            # The batch's queue time ends when it was taken; a request re-run alone waited for its own run.
            began = start if len(members) == len(batch) else done.started_ns
            queue_ns = [began - r.enqueued_ns for r in members]
            timings = BatchTimings(done.rows, len(members), done.merge_ns, done.infer_ns, done.split_ns)
            self._record(timings, (batch[0].key, done.rows), queue_ns)
            for r, q, i in zip(members, queue_ns, done.members):
                if not r.future.done():
                    r.future.set_result(BatchResult(outcomes[i].outputs, q, timings))

    def _not_batchable(self, exc: NotSplittable) -> None:
        log.warning("model %s: %s; serving it one request at a time from now on", self.name, exc)
        self.max_rows = 1

    def _record(self, timings: BatchTimings, shape: tuple, queue_ns: list[int]) -> None:
        infer_s = timings.infer_ns / 1e9
        self._exec_s_avg = 0.8 * self._exec_s_avg + 0.2 * infer_s if self._exec_s_avg else infer_s
        row_ms = timings.infer_ns / 1e6 / timings.size
        if len(self._seen_shapes) >= 4096:  # free-form shapes (e.g. every rec width): bound the memory
            self._seen_shapes.clear()
        self._seen_shapes.add(shape)
        self._row_ms_avg = row_ms if self._row_ms_avg is None else 0.8 * self._row_ms_avg + 0.2 * row_ms
        self._observer.on_batch(timings, queue_ns)


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize or 8
    except TypeError:
        return 2 if "16" in str(dtype) else 4  # bfloat16 and other names numpy lacks


class BatchedRunner(Runner):
    """A synchronous `Runner` whose calls go through a `DynamicBatcher`, for task pipelines (OCR, classify).

    Call it from a worker thread, never from the batcher's event loop thread (that would wait on itself).
    A call with more rows than the model's max batch size is split into chunks that are queued together.
    """

    backend = "batched"

    def __init__(self, batcher: DynamicBatcher, *, timeout_s: float | None = 300.0):
        super().__init__(batcher.io, None)
        self._batcher = batcher
        self._timeout_s = timeout_s

    @property
    def batcher(self) -> DynamicBatcher:
        return self._batcher

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = self._batcher.loop
        if loop is None:
            raise BatcherClosed(f"model '{self._batcher.name}' is not started")
        try:
            calling_loop = asyncio.get_running_loop()
        except RuntimeError:
            calling_loop = None
        if calling_loop is loop:
            raise RuntimeError("BatchedRunner.infer was called on the batcher's event loop; call it from a thread")
        rows = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        step = max(1, self._batcher.max_rows)
        if rows <= step:
            chunks = [feeds]
        else:
            chunks = [{n: a[i:i + step] for n, a in feeds.items()} for i in range(0, rows, step)]
        start = time.perf_counter()
        futures = [asyncio.run_coroutine_threadsafe(self._batcher.infer(c), loop) for c in chunks]
        try:
            results = [f.result(self._timeout_s) for f in futures]
        except concurrent.futures.TimeoutError:
            for f in futures:
                f.cancel()
            raise RequestTimeout(f"model '{self._batcher.name}' did not answer within {self._timeout_s} s") from None
        self.last_timings["batched"] = (time.perf_counter() - start) * 1e3
        if len(results) == 1:
            return results[0].outputs
        return {n: np.concatenate([r.outputs[n] for r in results], axis=0) for n in results[0].outputs}


__all__ = ["BatchObserver", "BatchResult", "BatchTimings", "BatchedRunner", "BatcherClosed", "BatcherSettings",
           "ClientGone", "DynamicBatcher", "InferenceFailed", "QueueFull", "RequestTimeout", "RequestTooLarge", "ServingError"]
