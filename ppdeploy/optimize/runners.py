"""Runner wrappers for searching stages inside a running pipeline: record the stage's own inputs, swap engines."""
from __future__ import annotations

import numpy as np


class RecordingRunner:
    """Runner wrapper that keeps every feed it is given (the task's own preprocessed stage inputs)."""

    def __init__(self, runner, limit: int = 400):
        self.runner = runner
        self.feeds: list[dict[str, np.ndarray]] = []
        self.limit = limit
        self.backend = getattr(runner, "backend", "?")

    @property
    def io(self):
        return self.runner.io

    @property
    def last_timings(self):
        return self.runner.last_timings

    def infer(self, feeds):
        if len(self.feeds) < self.limit:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.runner.infer(feeds)


class SwappableRunner:
    """Delegates to whichever runner is set; lets one OCR pipeline try each stage candidate in place."""

    def __init__(self, runner):
        self.runner = runner

    @property
    def io(self):
        return self.runner.io

    @property
    def backend(self):
        return getattr(self.runner, "backend", "?")

    @property
    def last_timings(self):
        return self.runner.last_timings

    def infer(self, feeds):
        return self.runner.infer(feeds)
