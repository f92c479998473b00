"""Throughput mode: many pages through one OCR pipeline at once, each page read exactly as `predict` reads it.

`OCRPipeline.predict_many(images)` and `OCRPipeline.iter_predict(images)` (the streaming form the CLI uses) run
`ThroughputExecutor`: two stage threads over the pipeline's runners, and pages in flight between them.
- the *front* thread decodes a page, detects, crops and classifies (`OCRPipeline.detect_and_crop`), then queues the
  page's rec batches exactly as `TextRecognizer.plan` cuts them;
- the *rec* thread runs those batches. Batches of different pages that have the same width are merged into one
  inference call (up to `merge_rows` rows): a crop's text depends on the width it is padded to, not on the other rows
  of its batch, so merging at equal width keeps every line as `predict` reads it. A batch of one row is never merged:
  ONNX Runtime's CPU kernels give a lone row last-digit-different probabilities than the same row among others
  (1e-5, BENCHMARKS.md), which could move a score.
So page i+1's decode, det and cls run while page i's rec runs, and the engines (which release the GIL) overlap with
the Python pre/post-processing of the other stage. Each runner is still called from one thread only (a runner is not
assumed to be thread-safe: OpenVINO's holds one infer request). How many threads each engine then takes is
`load_model`'s `threads=`; the bench (`ppdeploy bench ocr --throughput`) measures the choices side by side.

Results come back in input order, one `PageOutcome` per input; a page that fails (a bad image, an engine error on
its batch) is an outcome with its error, and the other pages go on. Per-page timings keep `predict`'s keys: each
stage's own milliseconds (rec's share of a merged batch in proportion to the page's rows in it) and `total`, the
page's latency from the start of its decode to its last line read, waits between the stages included.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.tasks.image_io import load_image
from ppdeploy.tasks.ocr.rec import RecTimings
from ppdeploy.tasks.ocr.result import TIMING_KEYS, OCRResult

DEFAULT_INFLIGHT = 2
"""Pages decoded and not yet handed back, at most. Two keep both stage threads busy (one page in rec while the next
goes through decode/det/cls); each more lets the rec thread find more batches to merge (rare on CPU document pages,
where batch widths seldom repeat) and adds about one page's time to every page's latency."""


@dataclass
class PageOutcome:
    """One input's answer: `result`, or the `error` that stopped it (its other pages are unaffected)."""

    index: int
    source: Any
    result: OCRResult | None = None
    error: BaseException | None = None


@dataclass
class _Page:
    index: int
    source: Any
    start: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_KEYS, 0.0))
    shape: tuple[int, int] = (0, 0)
    boxes: np.ndarray | None = None
    texts: list[tuple[str, float]] = field(default_factory=list)
    jobs_left: int = 0
    guarded: int = 0
    error: BaseException | None = None


@dataclass
class _RecJob:
    page: _Page
    idx: list[int]  # the crops' positions on their page
    crops: list[np.ndarray]
    width: int


_END = object()


class ThroughputExecutor:
    """Pages of one pipeline through its stages concurrently. `run(images)` yields a PageOutcome per image, in order.

    inflight: pages decoded but not yet handed back, at most (>= 1). merge_rows: rows of a merged rec batch at most
    (default twice the rec batch size; 0 or 1: no merging).
    """

    def __init__(self, pipeline: Any, *, inflight: int = DEFAULT_INFLIGHT, merge_rows: int | None = None):
        if inflight < 1:
            raise ConfigError(f"inflight must be >= 1, got {inflight}")
        self.pipeline = pipeline
        self.inflight = inflight
        self.merge_rows = 2 * pipeline.recognizer.options.batch_size if merge_rows is None else merge_rows
        self.merged_batches = 0  # rec calls that served more than one page (over this executor's life)
        self.rec_batches = 0

    def run(self, images: Iterable[Any]) -> Iterator[PageOutcome]:
        """Outcomes in input order, each as soon as it and those before it are done. Closing the generator early
        stops the stage threads after the calls they are in."""
        state = _RunState(self.inflight)
        front = threading.Thread(target=self._front, args=(iter(images), state), name="ocr-front", daemon=True)
        rec = threading.Thread(target=self._rec, args=(state,), name="ocr-rec", daemon=True)
        front.start()
        rec.start()
        try:
            index = 0
            while True:
                with state.cond:
                    while index not in state.done and (state.total is None or index < state.total) \
                            and state.fatal is None:
                        state.cond.wait()
                    if state.fatal is not None:
                        raise state.fatal
                    if index not in state.done:  # every page handed back
                        if state.failure is not None:
                            raise state.failure
                        return
                    outcome = state.done.pop(index)
                state.slots.release()
                index += 1
                yield outcome
        finally:
            state.stop = True
            state.slots.release()  # a front thread waiting for a slot sees the stop
            state.rec_queue.put(_END)
            front.join()
            rec.join()

    # -- the front stage: decode, det, crop, cls ---------------------------------------------------------------
    def _front(self, images: Iterator[Any], state: "_RunState") -> None:
        pipeline = self.pipeline
        try:
            for index, source in enumerate(images):
                state.slots.acquire()
                if state.stop:
                    return
                page = _Page(index, source, start=time.perf_counter())
                state.submitted += 1
                try:
                    bgr = load_image(source, max_pixels=pipeline.options.max_pixels)
                    page.timings["decode"] = (time.perf_counter() - page.start) * 1e3
                    page.shape = (int(bgr.shape[0]), int(bgr.shape[1]))
                    page.boxes, crops = pipeline.detect_and_crop(bgr, page.timings)
                    del bgr
                    plan = pipeline.recognizer.plan(crops) if crops else []
                except Exception as exc:  # this page's, not the run's: the others go on
                    page.error = exc
                    self._finish(page, state)
                    continue
                page.texts = [("", 0.0)] * len(crops)
                page.jobs_left = len(plan)
                if not plan:
                    self._finish(page, state)
                for idx, width in plan:
                    state.rec_queue.put(_RecJob(page, idx, [crops[i] for i in idx], width))
        except BaseException as exc:  # the input iterable itself failed: its pages so far come back, then this error
            state.failure = exc
        finally:
            with state.cond:
                state.total = state.submitted
                state.cond.notify_all()
            state.rec_queue.put(_END)

    # -- the rec stage: batches of several pages merged at equal width -----------------------------------------
    def _rec(self, state: "_RunState") -> None:
        try:
            self._rec_loop(state)
        except BaseException as exc:  # a fault of this module, not of a page: the consumer must not wait forever
            with state.cond:
                state.fatal = exc
                state.cond.notify_all()

    def _rec_loop(self, state: "_RunState") -> None:
        backlog: collections.deque[_RecJob] = collections.deque()
        ended = False
        while True:
            if not backlog:
                if ended:
                    return
                item = state.rec_queue.get()
                if item is _END:
                    ended = True
                    continue
                backlog.append(item)
            while True:  # whatever else is queued already: candidates to merge with
                try:
                    item = state.rec_queue.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    ended = True
                else:
                    backlog.append(item)
            if state.stop:
                return
            self._run_batch(self._take(backlog), state)

    def _take(self, backlog: collections.deque[_RecJob]) -> list[_RecJob]:
        """The oldest job, with later jobs of the same width (none with a single row) up to merge_rows rows."""
        first = backlog.popleft()
        group = [first]
        if len(first.idx) < 2 or self.merge_rows < 2:
            return group
        rows = len(first.idx)
        for job in list(backlog):
            if job.width == first.width and len(job.idx) >= 2 and rows + len(job.idx) <= self.merge_rows:
                group.append(job)
                rows += len(job.idx)
                backlog.remove(job)
        return group

    def _run_batch(self, group: list[_RecJob], state: "_RunState") -> None:
        recognizer = self.pipeline.recognizer
        live = [job for job in group if job.page.error is None]
        if not live:
            for job in group:
                self._job_done(job, state)
            return
        timings = RecTimings()
        crops = [c for job in live for c in job.crops]
        try:
            decoded = recognizer.read_batch(crops, live[0].width, timings)
        except Exception as exc:
            if len(live) > 1:  # one page's crops may be the cause: each alone, so only that page fails
                for job in group:
                    self._run_batch([job], state)
                return
            live[0].page.error = exc
            for job in group:
                self._job_done(job, state)
            return
        self.rec_batches += 1
        self.merged_batches += len(live) > 1
        guarded_rows = getattr(recognizer.runner, "last_guard_row_ids", None)
        offset = 0
        for job in live:
            rows = len(job.idx)
            share = rows / len(crops)
            page = job.page
            for i, res in zip(job.idx, decoded[offset:offset + rows]):
                page.texts[i] = res
            for key in ("rec_pre", "rec_infer", "rec_post", "rec_guard"):
                page.timings[key] += getattr(timings, key) * share
            if guarded_rows is not None:
                page.guarded += sum(offset <= r < offset + rows for r in guarded_rows)
            else:
                page.guarded += round(timings.guard_lines * share)
            offset += rows
        for job in group:
            self._job_done(job, state)

    def _job_done(self, job: _RecJob, state: "_RunState") -> None:
        job.page.jobs_left -= 1
        if job.page.jobs_left == 0:
            self._finish(job.page, state)

    def _finish(self, page: _Page, state: "_RunState") -> None:
        if page.error is not None:
            outcome = PageOutcome(page.index, page.source, error=page.error)
        else:
            page.timings["total"] = (time.perf_counter() - page.start) * 1e3
            lines = self.pipeline.lines_of(page.boxes, page.texts)
            outcome = PageOutcome(page.index, page.source, OCRResult(
                lines, page.timings, width=page.shape[1], height=page.shape[0], guarded_lines=page.guarded))
        with state.cond:
            state.done[page.index] = outcome
            state.cond.notify_all()


class _RunState:
    """What the stage threads and the consumer of one `run` share."""

    def __init__(self, inflight: int):
        self.slots = threading.Semaphore(inflight)
        self.rec_queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.done: dict[int, PageOutcome] = {}
        self.submitted = 0
        self.total: int | None = None  # pages submitted, once the input is exhausted (or failed)
        self.failure: BaseException | None = None  # the input iterable's own error, raised after its pages
        self.fatal: BaseException | None = None  # the rec thread's own fault, raised at once
        self.stop = False


__all__ = ["DEFAULT_INFLIGHT", "PageOutcome", "ThroughputExecutor"]
