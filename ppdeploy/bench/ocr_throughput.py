"""OCR throughput benchmark: a folder of pages read one page at a time (`predict`) and in throughput mode
(`iter_predict(inflight=N)`, ppdeploy.tasks.ocr.throughput), on the same engines, in the same run.

For each pipeline configuration and CPU thread count the engines are loaded once; every mode then reads the whole
folder in interleaved rounds (the order of the modes rotating per round), so the machine's drifting background load
falls on all of them alike. Reported per mode:
- pages/s: pages of the folder over the wall time of reading it all (what a batch job sees);
- per-page latency: for one page at a time, the wall time of each `predict`; in throughput mode, each page's
  `timings["total"]` (from the start of its decode to its last line read, waits between stages included);
- CPU s/page: the process's CPU time over the folder, per page;
- lines = sequential: whether every page's lines (text, score, box, order) equal those of one-page-at-a-time on the
  same engines (the throughput mode's contract), and the share of rec batches shared between pages.
Pages start from their encoded bytes in memory, so decode is measured and file reading is not.
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.backends.base import default_threads
from ppdeploy.bench.ocr import OCRConfig
from ppdeploy.bench.offline import MeasureSettings
from ppdeploy.bench.report import markdown_table
from ppdeploy.bench.stats import stage_means, summarize
from ppdeploy.core.errors import PPDeployError
from ppdeploy.tasks.ocr.builder import OCR
from ppdeploy.tasks.ocr.throughput import ThroughputExecutor

SEQUENTIAL = "one page at a time"


@dataclass
class ModeResult:
    config: str
    threads: int
    mode: str  # SEQUENTIAL or "throughput, inflight N"
    inflight: int
    folders: int = 0  # timed passes over the folder
    pages: int = 0  # timed pages
    pages_per_s: float | None = None
    latency_ms: dict[str, float] | None = None
    cpu_ms_per_page: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    identical: bool | None = None  # every page's lines equal to one-page-at-a-time's on the same engines
    differing_pages: int = 0
    rec_batches: int = 0
    merged_batches: int = 0
    speedup: float | None = None  # pages/s over one-page-at-a-time's, same engines
    error: str | None = None


Key = list[list[tuple[str, float, list[list[int]]]]]  # per page: (text, score, box) per line


class _Mode:
    def __init__(self, ocr: OCR, images: Sequence[bytes], result: ModeResult):
        self.ocr, self.images, self.result = ocr, images, result
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.latencies: list[float] = []
        self.stages: list[dict[str, float]] = []

    def read_folder(self) -> Key:
        executor = ThroughputExecutor(self.ocr, inflight=self.result.inflight) if self.result.inflight > 1 else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if executor is None:
            results, latencies = [], []
            for image in self.images:
                t = time.perf_counter()
                results.append(self.ocr.predict(image))
                latencies.append((time.perf_counter() - t) * 1e3)
        else:
            outcomes = list(executor.run(self.images))
            failed = [o for o in outcomes if o.error is not None]
            if failed:
                raise failed[0].error
            results = [o.result for o in outcomes]
            latencies = [r.timings["total"] for r in results]
            self.result.rec_batches += executor.rec_batches
            self.result.merged_batches += executor.merged_batches
        self.walls.append(time.perf_counter() - wall0)
        self.cpus.append(time.process_time() - cpu0)
        self.latencies += latencies
        self.stages += [r.timings for r in results]
        return [[(line.text, line.score, line.box) for line in r.lines] for r in results]

    def fill(self) -> None:
        r = self.result
        r.folders = len(self.walls)
        r.pages = len(self.latencies)
        r.pages_per_s = round(r.pages / sum(self.walls), 3)
        r.latency_ms = summarize(self.latencies).to_dict()
        r.cpu_ms_per_page = round(sum(self.cpus) * 1e3 / r.pages, 2)
        r.stages_ms = stage_means(self.stages)


def bench_throughput(images: Sequence[bytes], configs: Sequence[OCRConfig], *, threads: Sequence[int | None] = (None,),
                     inflight: Sequence[int] = (2, 4), settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=3,
                                                                                                 min_time_s=10.0),
                     ocr_options: dict[str, Any] | None = None,
                     on_result: Callable[[ModeResult], None] | None = None) -> list[ModeResult]:
    """Every config x thread count: one page at a time and throughput mode at each `inflight`, on the same engines.
    `settings`: warm-up passes over the folder (untimed; the first also gives the lines compared), then timed passes
    until each mode has at least `min_runs` passes and `min_time_s` seconds (or `max_time_s` per mode has passed)."""
    if not images:
        raise PPDeployError("no images to benchmark OCR throughput on")
    results: list[ModeResult] = []
    for config in configs:
        for n_threads in threads:
            label = config.label
            try:
                margin = {} if config.rec_guard_margin is None else {"rec_guard_margin": config.rec_guard_margin}
                ocr = OCR(backend=config.backend, precision=config.precision, threads=n_threads,
                          rec_guard=config.rec_guard, keep_fp32=config.keep_fp32, **dict(ocr_options or {}), **margin)
            except Exception as exc:  # a configuration that cannot load is a row with its reason
                row = ModeResult(label, n_threads or 0, SEQUENTIAL, 1, error=f"{type(exc).__name__}: {exc}")
                results.append(row)
                if on_result:
                    on_result(row)
                continue
            try:
                resolved = n_threads or default_threads()
                modes = [_Mode(ocr, images, ModeResult(label, resolved, SEQUENTIAL, 1))]
                modes += [_Mode(ocr, images, ModeResult(label, resolved, f"throughput, inflight {n}", n))
                          for n in inflight if n > 1]
                _run_modes(modes, settings)
            finally:
                ocr.close()
                gc.collect()
            base = modes[0].result
            for m in modes:
                m.result.speedup = round(m.result.pages_per_s / base.pages_per_s, 3) if base.pages_per_s else None
                results.append(m.result)
                if on_result:
                    on_result(m.result)
    return results


def _run_modes(modes: list[_Mode], settings: MeasureSettings) -> None:
    reference: Key | None = None
    for m in modes:  # warm-up: every engine sees every shape before timing; the first pass gives the lines compared
        for i in range(max(1, settings.warmup)):
            key = m.read_folder()
            if i == 0:
                if reference is None:
                    reference = key
                diff = sum(a != b for a, b in zip(reference, key))
                m.result.identical, m.result.differing_pages = diff == 0, diff
        m.walls, m.cpus, m.latencies, m.stages = [], [], [], []
        m.result.rec_batches = m.result.merged_batches = 0
    start = time.perf_counter()
    rnd = 0
    while True:
        k = rnd % len(modes)
        for m in modes[k:] + modes[:k]:
            m.read_folder()
        rnd += 1
        enough = all(len(m.walls) >= settings.min_runs and sum(m.walls) >= settings.min_time_s for m in modes)
        if enough or time.perf_counter() - start >= settings.max_time_s * len(modes):
            break
    for m in modes:
        m.fill()


def throughput_markdown(results: Sequence[ModeResult], pages: int, source: str) -> str:
    rows = []
    for r in results:
        if r.error:
            rows.append([r.config, r.threads or "default", r.mode, None, None, None, None, None, None, None,
                         f"could not run: {r.error}"])
            continue
        lat = r.latency_ms or {}
        merged = f"{r.merged_batches}/{r.rec_batches}" if r.inflight > 1 else "–"
        rows.append([r.config, r.threads, r.mode, r.pages_per_s, r.speedup, lat.get("mean"), lat.get("p50"),
                     lat.get("p90"), r.cpu_ms_per_page, merged,
                     "yes" if r.identical else f"no ({r.differing_pages} of {pages} pages differ)"])
    table = markdown_table(
        ["pipeline", "threads per engine", "mode", "pages/s", "× one at a time", "latency ms mean", "p50", "p90",
         "CPU ms/page", "rec batches shared", "lines = one at a time"], rows)
    return (f"{pages} pages ({source}), each mode reading the whole folder in interleaved rounds on the same engines.\n\n"
            + table + "\n\n(latency: one page at a time, each `predict`'s wall time; throughput mode, each page's time "
            "from the start of its decode to its last line read, waits between stages included. rec batches shared: "
            "inference calls that served several pages, of all rec calls.)")


def results_json(results: Sequence[ModeResult], pages: Sequence[Path | str], settings: MeasureSettings) -> dict[str, Any]:
    return {"images": [str(p) for p in pages], "settings": asdict(settings), "results": [asdict(r) for r in results]}


__all__ = ["ModeResult", "SEQUENTIAL", "bench_throughput", "results_json", "throughput_markdown"]
