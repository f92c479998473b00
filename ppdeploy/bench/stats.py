"""Latency statistics: percentiles and summaries of timing samples.

Percentiles are numpy's (`np.percentile`, linear interpolation between closest ranks, "type 7"), so p50 of
[1, 2, 3, 4] is 2.5 and p100 is the maximum; this module only adds the input checks. Summaries keep milliseconds throughout.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import InputError

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of samples, linearly interpolated between closest ranks."""
    if not 0.0 <= q <= 100.0:
        raise InputError(f"percentile must be within 0..100, got {q}")
    data = np.asarray(samples, dtype=np.float64)
    if data.size == 0:
        raise InputError("no samples to take a percentile of")
    if np.isnan(data).any():
        raise InputError("samples contain NaN")
    return float(np.percentile(data, q, method="linear"))


@dataclass(frozen=True)
class LatencySummary:
    """Summary of latency samples in milliseconds."""

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples_ms: Iterable[float]) -> LatencySummary:
    data = np.asarray(list(samples_ms), dtype=np.float64)
    if data.size == 0:
        raise InputError("no samples to summarize")
    return LatencySummary(
        count=int(data.size),
        mean=float(data.mean()),
        std=float(data.std(ddof=1)) if data.size > 1 else 0.0,
        min=float(data.min()),
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p99=percentile(data, 99),
        max=float(data.max()),
    )


def stage_means(per_call: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean time per stage over calls; a stage missing from a call counts as absent there, not as zero."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for timings in per_call:
        for stage, ms in timings.items():
            if isinstance(ms, (int, float)) and math.isfinite(ms):
                totals[stage] = totals.get(stage, 0.0) + float(ms)
                counts[stage] = counts.get(stage, 0) + 1
    return {stage: round(totals[stage] / counts[stage], 4) for stage in totals}


def ecdf(samples: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted samples and their empirical cumulative probabilities (for CDF plots)."""
    data = np.sort(np.asarray(samples, dtype=np.float64))
    if data.size == 0:
        return data, data
    return data, np.arange(1, data.size + 1, dtype=np.float64) / data.size
