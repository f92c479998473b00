"""Admission for task requests (`/v1/<route>`): whole pipelines (decode, several engine calls, post-processing) on
a small pool of threads, each taking a second or more on a CPU.

Bounding the number waiting (`max_queue`) is not enough under overload: with a page a second and 64 waiting, a new
request waits a minute, its client gives up, and the pool then spends its time on answers nobody reads while new
requests keep queueing behind them (the soak's first runs: /v1/ocr answered nothing for eight minutes while the
tensor routes went on). So, as Triton's queue policy bounds a request's time in the queue:
- a request is refused at once (429, Retry-After) when the expected wait — the requests ahead of it times the
  recent time a request takes on a thread, over the threads — exceeds `max_wait_s`;
- a request whose client disconnected while it waited is dropped when a thread picks it up, not run, and one that
  waited more than twice `max_wait_s` (the estimate lagged) gets 429 then rather than a late answer;
- before the first request has finished (no time per request yet), at most two per thread are admitted.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Callable, TypeVar

from ppdeploy.serve.batcher import ClientGone, QueueFull
from ppdeploy.serve.http.bodies import until_disconnect

T = TypeVar("T")
SMOOTHING = 0.2  # weight of the newest request in the moving average of the time on a thread
LATE_FACTOR = 2.0  # a request that waited this many times max_wait_s is refused when a thread takes it
COLD_WAITING = 2  # requests admitted per thread before the first one has finished (one running, one waiting)


class TaskQueue:
    """The count of task requests in progress, their recent time on a thread, and the admission rule above.
    `admit`/`release` run on the event loop; `run` on a pool thread."""

    def __init__(self, threads: int, max_queue: int, max_wait_s: float):
        self.threads = max(1, threads)
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self.service_s = 0.0  # moving average of one request's time on a thread (0 until the first one)
        self.dropped = 0  # requests whose client had gone before a thread took them

    def expected_wait_s(self) -> float:
        """How long a request admitted now would wait for a thread."""
        ahead = max(0, self.in_flight - self.threads + 1)
        return ahead * self.service_s / self.threads

    def admit(self) -> None:
        if self.in_flight >= self.max_queue + self.threads:
            raise QueueFull(f"{self.in_flight} image requests are already in progress", self._retry_after())
        if self.service_s == 0.0 and self.in_flight >= COLD_WAITING * self.threads:
            # Before the first answer the time per request is unknown: a cold burst would otherwise fill the whole
            # queue at once (the soak's 32 page clients at the start: two minutes of waiting for the last ones).
            raise QueueFull(f"{self.in_flight} image requests are in progress and none has finished yet", 1)
        wait = self.expected_wait_s()
        if self.max_wait_s > 0 and wait > self.max_wait_s:
            raise QueueFull(f"{self.in_flight} image requests are in progress: a new one would wait about "
                            f"{wait:.0f} s for a pipeline thread (limit {self.max_wait_s:g} s)", self._retry_after())
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def run(self, work: Callable[[], T], gone: threading.Event, admitted: float | None = None) -> T:
        """On a pool thread: `work()`, unless the client has gone while the request waited, or it waited more than
        LATE_FACTOR times `max_wait_s` (admitted at `time.monotonic()` = `admitted`): the estimate at admission lags
        when the time per request grows (a cold server, more load), and such a request's client has likely given
        up; it gets 429 with Retry-After instead of a late answer."""
        if gone.is_set():
            self.dropped += 1
            raise ClientGone("client disconnected while the request waited for a pipeline thread")
        waited = time.monotonic() - admitted if admitted is not None else 0.0
        if self.max_wait_s > 0 and waited > LATE_FACTOR * self.max_wait_s:
            self.dropped += 1
            raise QueueFull(f"the request waited {waited:.0f} s for a pipeline thread, more than "
                            f"{LATE_FACTOR:g} x --max-task-wait ({self.max_wait_s:g} s)", self._retry_after())
        start = time.perf_counter()
        answer = work()  # a request that fails (a bad image, say) fails fast: it says nothing of a page's time
        took = time.perf_counter() - start
        self.service_s = took if self.service_s == 0.0 else (1 - SMOOTHING) * self.service_s + SMOOTHING * took
        return answer

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.expected_wait_s() / 2))


async def flag_disconnect(receive, gone: threading.Event) -> None:
    """Set `gone` when the client disconnects (after the request body was read; cancel once answered)."""
    try:
        await until_disconnect(receive)
    except (asyncio.CancelledError, RuntimeError):
        return
    gone.set()


__all__ = ["TaskQueue", "flag_disconnect"]
