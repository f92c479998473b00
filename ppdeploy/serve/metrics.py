"""Server metrics: Prometheus text at `/metrics` and Triton's statistics JSON at `/v2/models/{name}/stats`.

Counters whose meaning matches Triton's are exported under Triton's exact names (no `_total` suffix, labels
`model` and `version`), so existing Triton dashboards work:

  nv_inference_request_success, nv_inference_request_failure{reason}, nv_inference_count,
  nv_inference_exec_count, nv_inference_request_duration_us, nv_inference_queue_duration_us,
  nv_inference_compute_input_duration_us, nv_inference_compute_infer_duration_us,
  nv_inference_compute_output_duration_us, nv_inference_pending_request_count (gauge: queue depth)

prometheus-client always appends `_total` to counters, so those are rendered here from plain integers (which
also feed the statistics JSON); ppdeploy's own metrics live in a per-server prometheus-client registry:

  ppdeploy_batch_size (histogram of rows per execution), ppdeploy_backend_fallbacks_total{model,backend},
  ppdeploy_engine_load_seconds{model,backend,cache}, ppdeploy_model_ready{model},
  ppdeploy_task_requests_total{task,status}, ppdeploy_engine_process_restarts_total{model} (engine_process: true),
  ppdeploy_worker_restarts_total (--workers N),
  ppdeploy_engine_executions_total{model}, ppdeploy_engine_batch_size{model} (a shared engine process, below)

Several HTTP worker processes (`ppdeploy serve --workers N`, ppdeploy.serve.workers) each count their own requests;
`ServerMetrics.snapshot()` is one worker's state as plain JSON-able data and `ServerMetrics.merged(snapshots)` the
server's totals, which whichever worker answers /metrics or /stats renders: counters, histograms and the pending
gauge are summed, `ppdeploy_model_ready` is the minimum (ready in every worker), other gauges the maximum.

With a shared engine process (--workers N and engine_process: true) the engine merges the batches of several
workers into one call. The Triton counters (nv_inference_exec_count, batch_stats) and ppdeploy_batch_size still
count what each worker's batcher sent to the engine; what the engine really ran is counted apart: each worker
call adds its share rows / merged_rows (the rows of the engine call it was part of) to
ppdeploy_engine_executions_total and, at merged_rows, to the ppdeploy_engine_batch_size histogram, so the server's
totals are the number of engine calls and their sizes (fractional per worker, whole once every part of a call is
counted); ppdeploy_engine_merged_calls_total counts worker calls that ran merged with another's.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from ppdeploy.serve.batcher import BatchTimings

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton's reason label values


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStat:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


class ModelMetrics:
    """Everything counted for one model. Updated only from the event loop thread (no locks needed)."""

    def __init__(self, server: "ServerMetrics", name: str, version: str):
        self.name, self.version = name, version
        self.success = _Duration()
        self.failure: dict[str, _Duration] = {r: _Duration() for r in FAILURE_REASONS}
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.pending = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, _BatchStat] = {}
        # A shared engine process's calls (on_engine_call; from inference threads, hence the lock)
        self.engine_executions = 0.0
        self.engine_batches: dict[int, float] = {}  # rows of the engine call -> sum of this process's shares
        self.engine_merged_calls = 0
        self._engine_lock = threading.Lock()
        self._batch_hist = server.batch_size.labels(name)
        self._ready = server.model_ready.labels(name)
        self._server = server

    # BatchObserver
    def on_batch(self, timings: BatchTimings, queue_ns: Sequence[int]) -> None:
        n = timings.requests
        self.inference_count += timings.size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        for q in queue_ns:
            self.queue.add(q)
        # Triton charges each request of a batch with the whole batch's compute time.
        self.compute_input.add(timings.input_ns * n, n)
        self.compute_infer.add(timings.infer_ns * n, n)
        self.compute_output.add(timings.output_ns * n, n)
        stat = self.batch_stats.get(timings.size)
        if stat is None:
            stat = self.batch_stats[timings.size] = _BatchStat()
        stat.compute_input.add(timings.input_ns)
        stat.compute_infer.add(timings.infer_ns)
        stat.compute_output.add(timings.output_ns)
        self._batch_hist.observe(timings.size)

    def on_queue_depth(self, depth: int) -> None:
        self.pending = depth

    def on_engine_call(self, rows: int, merged_rows: int) -> None:
        """One call into a shared engine process that ran `merged_rows` rows, `rows` of them this call's."""
        if rows <= 0 or merged_rows < rows:
            return
        share = rows / merged_rows
        with self._engine_lock:
            self.engine_executions += share
            self.engine_batches[merged_rows] = self.engine_batches.get(merged_rows, 0.0) + share
            if merged_rows > rows:
                self.engine_merged_calls += 1

    def on_request(self, ok: bool, duration_ns: int, reason: str = "OTHER") -> None:
        if ok:
            self.success.add(duration_ns)
        else:
            self.failure.get(reason, self.failure["OTHER"]).add(duration_ns)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def record_load(self, backend: str, seconds: float, cache_hit: bool | None, fallbacks: Sequence[str]) -> None:
        cache = "unknown" if cache_hit is None else ("hit" if cache_hit else "miss")
        self._server.engine_load_seconds.labels(self.name, backend, cache).set(seconds)
        for skipped in fallbacks:
            self._server.fallbacks.labels(self.name, skipped).inc()

    # -- one worker's counts, and their sum over workers (ppdeploy serve --workers N) -------------------------
    _DURATIONS = ("success", "queue", "compute_input", "compute_infer", "compute_output")

    def state(self) -> dict:
        """Everything statistics() and the Triton counters are made of, as JSON-able data."""
        out: dict = {"version": self.version, "inference_count": self.inference_count,
                     "execution_count": self.execution_count, "pending": self.pending,
                     "last_inference_ms": self.last_inference_ms,
                     "engine_executions": self.engine_executions, "engine_merged_calls": self.engine_merged_calls,
                     "engine_batches": {str(k): v for k, v in self.engine_batches.items()},
                     "failure": {r: [d.count, d.ns] for r, d in self.failure.items()},
                     "batch_stats": {str(size): [[d.count, d.ns] for d in (b.compute_input, b.compute_infer,
                                                                           b.compute_output)]
                                     for size, b in self.batch_stats.items()}}
        for key in self._DURATIONS:
            d = getattr(self, key)
            out[key] = [d.count, d.ns]
        return out

    def absorb(self, state: dict) -> None:
        """Add another worker's state() to this one's counts."""
        self.inference_count += state["inference_count"]
        self.execution_count += state["execution_count"]
        self.pending += state["pending"]
        self.last_inference_ms = max(self.last_inference_ms, state["last_inference_ms"])
        self.engine_executions += state.get("engine_executions", 0.0)
        self.engine_merged_calls += state.get("engine_merged_calls", 0)
        for size, share in state.get("engine_batches", {}).items():
            self.engine_batches[int(size)] = self.engine_batches.get(int(size), 0.0) + share
        for key in self._DURATIONS:
            getattr(self, key).add(state[key][1], state[key][0])
        for reason, (count, ns) in state["failure"].items():
            self.failure.setdefault(reason, _Duration()).add(ns, count)
        for size, parts in state["batch_stats"].items():
            stat = self.batch_stats.setdefault(int(size), _BatchStat())
            for d, (count, ns) in zip((stat.compute_input, stat.compute_infer, stat.compute_output), parts):
                d.add(ns, count)

    def statistics(self) -> dict:
        """Triton's ModelStatistics JSON (what `tritonclient.http...get_inference_statistics` returns)."""
        fail = _Duration()
        for d in self.failure.values():
            fail.add(d.ns, d.count)
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(), "fail": fail.json(), "queue": self.queue.json(),
                "compute_input": self.compute_input.json(), "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": s.compute_input.json(), "compute_infer": s.compute_infer.json(),
                 "compute_output": s.compute_output.json()}
                for size, s in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
        }


_TRITON_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda m: [({}, m.success.count)]),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda m: [({"reason": r}, d.count) for r, d in m.failure.items()]),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)",
     lambda m: [({}, m.inference_count)]),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts once)",
     lambda m: [({}, m.execution_count)]),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda m: [({}, (m.success.ns + sum(d.ns for d in m.failure.values())) // 1000)]),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda m: [({}, m.queue.ns // 1000)]),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda m: [({}, m.compute_input.ns // 1000)]),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda m: [({}, m.compute_infer.ns // 1000)]),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda m: [({}, m.compute_output.ns // 1000)]),
)


def _label_text(labels: dict[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{esc(v)}"' for k, v in labels.items())


class ServerMetrics:
    """One per server (a private registry, so several servers in one process, e.g. tests, do not collide)."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_size = Histogram("ppdeploy_batch_size", "Rows per model execution (dynamic batching)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.fallbacks = Counter("ppdeploy_backend_fallbacks", "Backends skipped while loading a model",
                                 ["model", "backend"], registry=self.registry)
        self.engine_load_seconds = Gauge("ppdeploy_engine_load_seconds",
                                         "Seconds to build (cache miss) or load (cache hit) the model's engine",
                                         ["model", "backend", "cache"], registry=self.registry)
        self.model_ready = Gauge("ppdeploy_model_ready", "1 when the model serves requests", ["model"],
                                 registry=self.registry)
        self.task_requests = Counter("ppdeploy_task_requests", "Requests to the task routes (/v1/...)",
                                     ["task", "status"], registry=self.registry)
        self.engine_process_restarts = Counter("ppdeploy_engine_process_restarts",
                                               "Engine processes started again after one died", ["model"],
                                               registry=self.registry)
        self.engine_demotions = Counter("ppdeploy_engine_demotions", "Engines taken out of service after failing at "
                                        "run time (the model reloads on the next backend of its chain)",
                                        ["model", "backend"], registry=self.registry)
        self.worker_restarts = Counter("ppdeploy_worker_restarts", "HTTP worker processes started again after one "
                                       "died (ppdeploy serve --workers N)", registry=self.registry)
        self.models: dict[str, ModelMetrics] = {}
        self._merged_families: list | None = None  # set by merged(): the registry part is rendered from these

    def model(self, name: str, version: str = "1") -> ModelMetrics:
        if name not in self.models:
            self.models[name] = ModelMetrics(self, name, version)
        return self.models[name]

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        lines: list[str] = []
        models = list(self.models.values())
        for name, help_text, samples in _TRITON_COUNTERS:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for m in models:
                for extra, value in samples(m):
                    labels = _label_text({"model": m.name, "version": m.version, **extra})
                    lines.append(f"{name}{{{labels}}} {value}")
        lines.append("# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting "
                     "execution per-model.")
        lines.append("# TYPE nv_inference_pending_request_count gauge")
        for m in models:
            lines.append(f"nv_inference_pending_request_count{{{_label_text({'model': m.name, 'version': m.version})}}} {m.pending}")
        lines.extend(_engine_lines([m for m in models if m.engine_batches]))
        if self._merged_families is not None:
            return ("\n".join(lines) + "\n").encode() + _families_text(self._merged_families)
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)

    # -- several workers ------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This process's counts as JSON-able data (what `merged` sums)."""
        return {"models": {name: m.state() for name, m in self.models.items()},
                "registry": registry_families(self.registry)}

    @classmethod
    def merged(cls, snapshots: Sequence[dict], extra_families: Sequence[list] = ()) -> "ServerMetrics":
        """The server's totals over several workers' snapshots (plus families counted elsewhere, e.g. by the
        supervisor): render() and models[...].statistics() of the result answer for the whole server."""
        out = cls()
        for snap in snapshots:
            for name, state in snap["models"].items():
                out.model(name, state["version"]).absorb(state)
        out._merged_families = merge_families([f for snap in snapshots for f in snap["registry"]]
                                               + list(extra_families))
        return out


def _engine_lines(models: Sequence[ModelMetrics]) -> list[str]:
    """The shared-engine metrics (see the module docstring), rendered here because their counts are fractional
    shares that only add up to whole engine calls over all workers."""
    if not models:
        return []
    lines = ["# HELP ppdeploy_engine_executions_total Engine calls a shared engine process ran (merged batches)",
             "# TYPE ppdeploy_engine_executions_total counter"]
    lines += [f'ppdeploy_engine_executions_total{{{_label_text({"model": m.name})}}} {round(m.engine_executions, 6)}'
              for m in models]
    merged_help = "Calls into a shared engine process that ran merged with another caller's"
    lines += [f"# HELP ppdeploy_engine_merged_calls_total {merged_help}",
              "# TYPE ppdeploy_engine_merged_calls_total counter"]
    lines += [f'ppdeploy_engine_merged_calls_total{{{_label_text({"model": m.name})}}} {m.engine_merged_calls}'
              for m in models]
    lines += ["# HELP ppdeploy_engine_batch_size Rows per engine call of a shared engine process (merged batches)",
              "# TYPE ppdeploy_engine_batch_size histogram"]
    for m in models:
        cumulative = 0.0
        for bound in (*BATCH_BUCKETS, float("inf")):
            cumulative = sum(v for size, v in m.engine_batches.items() if size <= bound)
            le = "+Inf" if bound == float("inf") else f"{float(bound)}"
            lines.append(f'ppdeploy_engine_batch_size_bucket{{{_label_text({"model": m.name, "le": le})}}} '
                         f"{round(cumulative, 6)}")
        total = sum(size * v for size, v in m.engine_batches.items())
        lines.append(f'ppdeploy_engine_batch_size_count{{{_label_text({"model": m.name})}}} {round(cumulative, 6)}')
        lines.append(f'ppdeploy_engine_batch_size_sum{{{_label_text({"model": m.name})}}} {round(total, 6)}')
    return lines


def registry_families(registry) -> list[list]:
    """[[name, type, help, [[sample_name, labels, value], ...]], ...] of a prometheus-client registry."""
    return [[f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
            for f in registry.collect()]


def _gauge_merge(family: str):
    # ready means ready in every worker; a load time or other level is the slowest worker's
    return min if family == "ppdeploy_model_ready" else max


def merge_families(families: Sequence[list]) -> list[list]:
    """Sum counters and histograms sample by sample (same name and labels); `_created` timestamps take the
    earliest; gauges per _gauge_merge. Families keep their first-seen order."""
    merged: dict[str, list] = {}
    values: dict[str, dict[tuple, list]] = {}
    for name, typ, help_text, samples in families:
        if name not in merged:
            merged[name] = [name, typ, help_text, []]
            values[name] = {}
        table = values[name]
        for sample_name, labels, value in samples:
            key = (sample_name, tuple(sorted(labels.items())))
            if key not in table:
                table[key] = [sample_name, dict(labels), value]
            elif sample_name.endswith("_created"):
                table[key][2] = min(table[key][2], value)
            elif typ == "gauge":
                table[key][2] = _gauge_merge(name)(table[key][2], value)
            else:
                table[key][2] += value
    for name, family in merged.items():
        family[3] = list(values[name].values())
    return list(merged.values())


def _families_text(families: Sequence[list]) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric

    class _Fixed:  # a collector that yields the merged families as they are
        def collect(self):
            for name, typ, help_text, samples in families:
                metric = Metric(name, help_text, typ)
                for sample_name, labels, value in samples:
                    metric.add_sample(sample_name, labels, value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry)


__all__ = ["BATCH_BUCKETS", "ModelMetrics", "ServerMetrics", "merge_families", "registry_families"]
