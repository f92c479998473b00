"""One runner call for several requests: merge their feeds along the batch axis, run once, split the outputs
back by each request's rows; when the merged call fails, run each request alone, so one bad request fails alone.

The dynamic batcher (ppdeploy.serve.batcher), the engine process's merge scheduler
(ppdeploy.serve.engine_process.merge) and Ray Serve's batches (ppdeploy.serve.ray) all run batches through
`run_merged`, so they give the same guarantee: a request's outputs equal what the runner gives for it alone.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import PPDeployError

log = logging.getLogger("ppdeploy.serve.merge")

Feeds = Mapping[str, np.ndarray]


class NotSplittable(PPDeployError):
    """The outputs do not carry the batch rows, so a merged call cannot be split back per request."""


@dataclass(frozen=True)
class Run:
    """One runner call: the requests it answered (indexes into the request list), its rows, when it started and
    how long its stages took (perf_counter_ns), and what `after` returned right after the call."""

    members: tuple[int, ...]
    rows: int
    started_ns: int
    merge_ns: int
    infer_ns: int
    split_ns: int
    info: Any = None


@dataclass(frozen=True)
class Outcome:
    """One request's answer: its outputs and the run that gave them, or the error of its own run."""

    outputs: dict[str, np.ndarray] | None = None
    error: Exception | None = None
    run: Run | None = None


def rows_of(feeds: Feeds) -> int:
    """A request's batch size: dim 0 of its first input that has dims (1 for scalars only)."""
    return next((int(a.shape[0]) for a in feeds.values() if a.ndim), 1)


def merge_feeds(requests: Sequence[Feeds], pad: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Concatenate the requests' inputs along axis 0 (one request: its feeds as they are). `pad`: input name ->
    axes zero-padded to the largest request's size first, so requests of different lengths share a batch."""
    if len(requests) == 1:
        return dict(requests[0])
    pad = pad or {}
    merged = {}
    for name in requests[0]:
        arrays = [r[name] for r in requests]
        if name in pad:
            arrays = pad_to_common(arrays, tuple(pad[name]))
        merged[name] = np.concatenate(arrays, axis=0)
    return merged


def split_outputs(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output, in order (views; one request: the outputs as they are). Raises
    NotSplittable when an output does not have sum(rows) rows."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise NotSplittable(f"output '{name}' has shape {arr.shape}, not the {total} rows of a merged call")
    parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for name, arr in outputs.items():
        start = 0
        for part, n in zip(parts, rows):
            part[name] = arr[start:start + n]
            start += n
    return parts


def pad_to_common(arrays: list[np.ndarray], axes: tuple[int, ...]) -> list[np.ndarray]:
    """Zero-pad `axes` of every array to the largest size among them."""
    target = list(arrays[0].shape)
    for a in arrays[1:]:
        for ax in axes:
            target[ax] = max(target[ax], a.shape[ax])
    out = []
    for a in arrays:
        widths = [(0, target[ax] - a.shape[ax]) if ax in axes else (0, 0) for ax in range(a.ndim)]
        out.append(np.pad(a, widths) if any(w for _, w in widths) else a)
    return out


def run_merged(infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]], requests: Sequence[Feeds],
               rows: Sequence[int] | None = None, *, pad: Mapping[str, Sequence[int]] | None = None,
               after: Callable[[], Any] | None = None,
               on_not_splittable: Callable[[NotSplittable], None] | None = None) -> list[Outcome]:
    """Run `requests` as one call of `infer`, then split; if that call fails (or its outputs cannot be split),
    run each request alone. Returns one Outcome per request, in order; never raises what `infer` raised.

    `rows`: each request's batch size (default: `rows_of`). `after`: called right after each call of `infer`,
    its result kept as `Run.info` (e.g. the runner's timings). `on_not_splittable`: told when the outputs lacked
    the batch rows (the caller may stop merging)."""
    rows = [rows_of(r) for r in requests] if rows is None else list(rows)

    def attempt(members: tuple[int, ...]) -> tuple[list[dict[str, np.ndarray]], Run] | Exception:
        try:
            t0 = time.perf_counter_ns()
            feeds = merge_feeds([requests[i] for i in members], pad)
            t1 = time.perf_counter_ns()
            outputs = infer(feeds)
            t2 = time.perf_counter_ns()
            info = after() if after is not None else None
            del feeds
            parts = split_outputs(outputs, [rows[i] for i in members])
            t3 = time.perf_counter_ns()
        except Exception as exc:  # noqa: BLE001 - the request's answer (or the reason to run alone)
            return exc
        return parts, Run(members, sum(rows[i] for i in members), t0, t1 - t0, t2 - t1, t3 - t2, info)

    def checked(members: tuple[int, ...]) -> tuple[list[dict[str, np.ndarray]], Run] | Exception:
        result = attempt(members)
        if isinstance(result, Exception):
            # The traceback stays printable, but its finished frames drop their locals (feeds may view shared
            # memory that must be unmapped once the call is answered).
            traceback.clear_frames(result.__traceback__)
        return result

    everyone = tuple(range(len(requests)))
    result = checked(everyone)
    if not isinstance(result, Exception):
        parts, run = result
        return [Outcome(part, None, run) for part in parts]
    if len(requests) == 1:
        return [Outcome(None, result, None)]
    if isinstance(result, NotSplittable) and on_not_splittable is not None:
        on_not_splittable(result)
    log.debug("a merged call of %d requests failed (%s); running them one by one", len(requests), result)
    del result
    outcomes = []
    for i in everyone:
        alone = checked((i,))
        if isinstance(alone, Exception):
            outcomes.append(Outcome(None, alone, None))
        else:
            (part,), run = alone
            outcomes.append(Outcome(part, None, run))
    return outcomes


__all__ = ["NotSplittable", "Outcome", "Run", "merge_feeds", "pad_to_common", "rows_of", "run_merged",
           "split_outputs"]
