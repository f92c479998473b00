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
  ppdeploy_task_requests_total{task,status}, ppdeploy_engine_process_restarts_total{model} (engine_process: true)
"""
from __future__ import annotations

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
        self.models: dict[str, ModelMetrics] = {}

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
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)


__all__ = ["BATCH_BUCKETS", "ModelMetrics", "ServerMetrics"]
