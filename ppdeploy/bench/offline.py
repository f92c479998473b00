"""Offline model benchmark: one model through backends x precisions x batch sizes x threads.

Each case: load (through the engine cache, so build time is not measured here), warm up, then time
`runner.infer` until both a minimum count and a minimum time are reached (bounded by a maximum time),
recording per-call latency, the runner's own per-stage times (`last_timings`) and the peak resident
memory during the case. A case that cannot run (backend missing, build failure) is recorded with its
reason instead of aborting the matrix.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ppdeploy.backends import BACKENDS, get_backend
from ppdeploy.bench.stats import stage_means, summarize
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.deploy.load import load_model
from ppdeploy.source import zoo

log = logging.getLogger("ppdeploy.bench")

@dataclass(frozen=True)
class MeasureSettings:
    warmup: int = 3
    min_runs: int = 10
    min_time_s: float = 1.0
    max_time_s: float = 30.0  # stop even if min_runs is not reached (a very slow case)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.min_time_s < 0 or self.max_time_s <= 0:
            raise InputError(f"invalid measurement settings {self}")


@dataclass
class Measurement:
    samples_ms: list[float]
    stages: list[dict[str, float]]
    wall_s: float
    cpu_ms: list[float] = field(default_factory=list)  # process CPU time per call (all threads)


class PeakRSS:
    """Peak resident memory of this process over a block, in MiB.

    Linux lets a process reset its high-water mark (write 5 to /proc/self/clear_refs), which makes the
    peak per case exact without a sampling thread competing for the 2 cores. Elsewhere the lifetime peak
    (getrusage) is reported and marked as such.
    """

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self.exact = False

    def __enter__(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mib = _vm_hwm_mib() if self.exact else _ru_maxrss_mib()


def _vm_hwm_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return _ru_maxrss_mib()


def _ru_maxrss_mib() -> float | None:
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def gpu_memory_mib(pid: int | None = None) -> float | None:
    """GPU memory this process holds now (all GPUs, MiB, from nvidia-smi); None without a GPU or the tool."""
    import os
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    pid = pid or os.getpid()
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    total = 0.0
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                total += float(parts[1])
            except ValueError:
                continue
    return total


def measure(call: Callable[[], Mapping[str, float] | None], settings: MeasureSettings) -> Measurement:
    """Time `call` (which may return per-stage ms) after warm-up until min count and min time are met."""
    for _ in range(settings.warmup):
        call()
    m = Measurement([], [], 0.0)
    start = time.perf_counter()
    while True:
        _timed_call(call, m)
        elapsed = time.perf_counter() - start
        if (len(m.samples_ms) >= settings.min_runs and elapsed >= settings.min_time_s) or elapsed >= settings.max_time_s:
            break
    m.wall_s = time.perf_counter() - start
    return m


def _timed_call(call: Callable[[], Mapping[str, float] | None], m: Measurement) -> None:
    c0, t0 = time.process_time(), time.perf_counter()
    timings = call()
    m.samples_ms.append((time.perf_counter() - t0) * 1e3)
    m.cpu_ms.append((time.process_time() - c0) * 1e3)
    if timings:
        m.stages.append(dict(timings))


def rss_mib() -> float | None:
    """Resident memory of this process now (MiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class ModelCase:
    model: str
    backend: str
    precision: str
    batch: int
    threads: int | None


@dataclass
class CaseResult:
    """One row of the matrix. `latency` is per call (one batch); throughput counts samples (batch items)."""

    model: str
    backend: str  # requested backend
    precision: str
    batch: int
    threads: int | None
    ok: bool
    error: str | None = None
    resolved_backend: str | None = None  # what actually ran (auto → openvino, ...)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    latency: dict[str, float] | None = None
    throughput: float | None = None  # items per second
    stages_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None  # sequential runs: peak resident memory during this case
    load_rss_mib: float | None = None  # resident memory added by loading this engine
    gpu_memory_mib: float | None = None  # held by this process after the case (GPU backends only)
    cpu_ms: dict[str, float] | None = None  # process CPU time per call (all threads)
    load_s: float | None = None
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_samples:
            data.pop("samples_ms")
        else:
            data["samples_ms"] = [round(x, 4) for x in self.samples_ms]
        return data


def sample_shape_for(model: str, io, overrides: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """Per-sample shape (without the batch dim) of each input.

    Order of precedence: the user's override, the bundled model's representative shape, the model's own
    fixed dims. A dynamic non-batch dim with nothing to fill it is an error that says how to give it.
    """
    overrides = dict(overrides or {})
    out: dict[str, tuple[int, ...]] = {}
    for spec in io.inputs:
        if spec.name in overrides:
            out[spec.name] = tuple(int(d) for d in overrides[spec.name])
            continue
        example = zoo.example_shape(model)
        if example is not None and len(io.inputs) == 1:
            out[spec.name] = tuple(example[1:])
            continue
        rest = spec.shape[1:]
        if any(d is None for d in rest):
            raise InputError(
                f"input '{spec.name}' has dynamic dims {spec.describe()} and no benchmark shape",
                hint=f"pass --shape {spec.name}=" + "x".join(str(d or 224) for d in rest),
            )
        out[spec.name] = tuple(int(d) for d in rest)
    return out


def make_feeds(io, sample_shapes: Mapping[str, tuple[int, ...]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in io.inputs:
        fixed_batch = spec.shape[0] if spec.shape else None
        if fixed_batch is not None and fixed_batch != batch:
            raise InputError(f"input '{spec.name}' fixes the batch dim to {fixed_batch}; batch size {batch} cannot run")
        shape = (batch, *sample_shapes[spec.name])
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(f"cannot generate benchmark data for input '{spec.name}' of dtype {spec.dtype}")
    return feeds


@dataclass
class LoadedModel:
    runner: Any
    backend: str  # the backend that actually loaded
    close: Callable[[], None]


def load_runner(model: str, backend: str, precision: str, threads: int | None) -> LoadedModel:
    """Load through `ppdeploy.deploy.load.load_model` (engine cache, fallback chain); build time is not measured."""
    dep = load_model(model, backend=backend, precision=precision, threads=threads)
    return LoadedModel(dep.runner, dep.backend, dep.close)


def _on_gpu(backend: str) -> bool:
    try:
        return backend in BACKENDS and get_backend(backend).device == "gpu"
    except PPDeployError:
        return False


def expand_cases(models: Iterable[str], backends: Iterable[str], precisions: Iterable[str],
                 batch_sizes: Iterable[int], threads: Iterable[int | None]) -> list[ModelCase]:
    return [ModelCase(m, b, p, bs, t) for m in models for b in backends for p in precisions
            for t in threads for bs in batch_sizes]


def run_cases(
    cases: Sequence[ModelCase],
    settings: MeasureSettings = MeasureSettings(),
    *,
    shape_overrides: Mapping[str, Sequence[int]] | None = None,
    on_case: Callable[[ModelCase, CaseResult], None] | None = None,
    loader: Callable[[str, str, str, int | None], LoadedModel] = load_runner,
    interleave: bool = False,
) -> list[CaseResult]:
    """Run every case; one loaded model serves all batch sizes of the same (model, backend, precision, threads).

    interleave=False: one case after the other, each with its exact peak RSS. interleave=True: every engine is
    loaded first, then the cases take turns in short time slices until each has its count and time, so a
    drifting background load on a shared machine is spread over all of them (their ratios stay honest);
    memory is then reported as what each engine added when it loaded.
    """
    groups: dict[tuple, list[ModelCase]] = {}
    for case in cases:
        groups.setdefault((case.model, case.backend, case.precision, case.threads), []).append(case)
    if interleave:
        return _run_interleaved(groups, settings, shape_overrides, on_case, loader)
    results: list[CaseResult] = []
    for key, group in groups.items():
        loaded, load_s, load_rss, error = _load(key, loader)
        for case in group:
            if loaded is None:
                res = CaseResult(case.model, case.backend, case.precision, case.batch, case.threads, False, error)
            else:
                res = _run_one(case, loaded, settings, shape_overrides, load_s)
                res.load_rss_mib = load_rss
            results.append(res)
            if on_case:
                on_case(case, res)
        if loaded is not None:
            loaded.close()
        gc.collect()
    return results


def _load(key: tuple, loader) -> tuple[LoadedModel | None, float | None, float | None, str | None]:
    model, backend, precision, threads = key
    try:
        rss0, t0 = rss_mib(), time.perf_counter()
        loaded = loader(model, backend, precision, threads)
        load_s, rss1 = round(time.perf_counter() - t0, 3), rss_mib()
        return loaded, load_s, (round(rss1 - rss0, 1) if rss0 is not None and rss1 is not None else None), None
    except PPDeployError as exc:
        return None, None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    except Exception as exc:  # a backend library's own failure: record it, keep the matrix going
        log.exception("loading %s on %s/%s failed", model, backend, precision)
        return None, None, None, f"{type(exc).__name__}: {exc}"


@dataclass
class _Slot:
    """One case being timed in interleaved rounds."""

    case: ModelCase
    result: CaseResult
    call: Callable[[], Mapping[str, float]] | None = None
    m: Measurement = field(default_factory=lambda: Measurement([], [], 0.0))

    def done(self, settings: MeasureSettings) -> bool:
        total_s = sum(self.m.samples_ms) / 1e3
        return self.call is None or total_s >= settings.max_time_s or (
            len(self.m.samples_ms) >= settings.min_runs and total_s >= settings.min_time_s)


def _run_interleaved(groups, settings, shape_overrides, on_case, loader) -> list[CaseResult]:
    slots: list[_Slot] = []
    loaded_all: list[LoadedModel] = []
    try:
        for key, group in groups.items():
            loaded, load_s, load_rss, error = _load(key, loader)
            if loaded is not None:
                loaded_all.append(loaded)
            for case in group:
                res = CaseResult(case.model, case.backend, case.precision, case.batch, case.threads, False, error,
                                 resolved_backend=loaded.backend if loaded else None, load_s=load_s,
                                 load_rss_mib=load_rss)
                slot = _Slot(case, res)
                if loaded is not None:
                    _prepare(slot, loaded.runner, settings, shape_overrides)
                slots.append(slot)
        # Short turns (a tenth of the minimum time each) so every case sees every phase of the background load.
        turn_s = max(0.05, settings.min_time_s / 10)
        rnd = 0
        reported: set[int] = set()
        while True:
            for i, slot in enumerate(slots):  # report each case as soon as it has all its samples
                if i not in reported and slot.done(settings):
                    reported.add(i)
                    if slot.m.samples_ms and slot.result.error is None:
                        _finish(slot.result, slot.m, slot.case.batch)
                    if on_case:
                        on_case(slot.case, slot.result)
            active = [s for s in slots if not s.done(settings)]
            if not active:
                break
            k = rnd % len(active)
            for slot in active[k:] + active[:k]:
                end = time.perf_counter() + turn_s
                try:
                    while True:
                        _timed_call(slot.call, slot.m)
                        if time.perf_counter() >= end or slot.done(settings):
                            break
                except Exception as exc:
                    log.exception("benchmarking %s failed", slot.case)
                    slot.result.error, slot.call = f"{type(exc).__name__}: {exc}", None
            rnd += 1
    finally:
        for loaded in loaded_all:
            loaded.close()
        gc.collect()
    return [s.result for s in slots]


def _prepare(slot: _Slot, runner, settings: MeasureSettings, shape_overrides) -> None:
    case = slot.case
    try:
        feeds = make_feeds(runner.io, sample_shape_for(case.model, runner.io, shape_overrides), case.batch)
        slot.result.input_shapes = {k: list(v.shape) for k, v in feeds.items()}

        def call() -> Mapping[str, float]:
            runner.infer(feeds)
            return runner.last_timings

        for _ in range(settings.warmup):
            call()
        slot.call = call
    except PPDeployError as exc:
        slot.result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    except Exception as exc:
        log.exception("preparing %s failed", case)
        slot.result.error = f"{type(exc).__name__}: {exc}"


def _finish(res: CaseResult, m: Measurement, batch: int) -> None:
    res.ok = True
    res.latency = summarize(m.samples_ms).to_dict()
    res.throughput = round(batch * len(m.samples_ms) / (sum(m.samples_ms) / 1e3), 3)
    res.stages_ms = stage_means(m.stages)
    res.cpu_ms = summarize(m.cpu_ms).to_dict() if m.cpu_ms else None
    res.samples_ms = m.samples_ms
    if _on_gpu(res.resolved_backend or res.backend):
        res.gpu_memory_mib = gpu_memory_mib()


def _run_one(case: ModelCase, loaded: LoadedModel, settings: MeasureSettings,
             shape_overrides: Mapping[str, Sequence[int]] | None, load_s: float | None) -> CaseResult:
    runner = loaded.runner
    res = CaseResult(case.model, case.backend, case.precision, case.batch, case.threads, False,
                     resolved_backend=loaded.backend, load_s=load_s)
    try:
        shapes = sample_shape_for(case.model, runner.io, shape_overrides)
        feeds = make_feeds(runner.io, shapes, case.batch)
        res.input_shapes = {k: list(v.shape) for k, v in feeds.items()}

        def call() -> Mapping[str, float]:
            runner.infer(feeds)
            return runner.last_timings

        with PeakRSS() as rss:
            m = measure(call, settings)
    except PPDeployError as exc:
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return res
    except Exception as exc:
        log.exception("benchmarking %s failed", case)
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    _finish(res, m, case.batch)
    res.peak_rss_mib = rss.peak_mib
    return res
