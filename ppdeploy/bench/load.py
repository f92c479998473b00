"""Open-loop load generator for HTTP and gRPC (Poisson or constant arrivals).

Arrival times are drawn before the run starts and requests are sent at those times whether or not
earlier ones have answered, so a slow server builds a queue and the queueing shows in the latencies
(a closed loop would quietly send less instead). Each latency is measured from the request's
*scheduled* send time, not from when the client got round to sending it: if the generator itself falls
behind, that delay is charged to the measurement rather than hidden (coordinated omission). The lag
between scheduled and actual send is reported separately so a saturated client is visible.

The requests come from `LoadSettings.workers` client processes (`ppdeploy.bench.load_worker`: keep-alive
connections, the request encoded once, a few microseconds of client CPU per request), so the generator is not
what limits a fast server; the arrival schedule is one process drawn from one seed and dealt round-robin to
the workers, and their records are merged back in schedule order.

The same schedules drive Triton's gRPC protocol (`grpc_v2_request`, a `grpc://host:port` target) and inputs
placed once in system shared memory (`SharedMemoryInputs`: the requests then name a region instead of carrying
the tensor), so HTTP and gRPC, bytes and shared memory, are measured by one generator.

Bounded on every side: a maximum request count, the run duration, a drain timeout after the last
arrival, a per-request timeout and a cap on requests in flight. Only loopback addresses are allowed
unless the caller passes `allow_remote=True` (a load test pointed at someone else's service is an attack).
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from ppdeploy.bench.load_worker import WorkerJob, WorkerResult
from ppdeploy.bench.stats import summarize
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.core.lazy import lazy_import

pb = lazy_import("tritonclient.grpc.service_pb2")
shm_utils = lazy_import("tritonclient.utils.shared_memory")

DISTRIBUTIONS = ("poisson", "constant")
KINDS = ("v2", "ocr", "classify")


def arrival_schedule(rate: float, duration_s: float, distribution: str = "poisson", *, seed: int = 0,
                     max_requests: int | None = None) -> np.ndarray:
    """Send offsets in seconds from the start, all below `duration_s`.

    Poisson: exponential inter-arrival gaps with mean 1/rate (the first arrival after one gap too, so the
    process is memoryless from t=0). Constant: one request every 1/rate seconds starting at 0.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise InputError(f"rate must be a positive number of requests per second, got {rate}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise InputError(f"duration must be positive seconds, got {duration_s}")
    if distribution not in DISTRIBUTIONS:
        raise InputError(f"unknown arrival distribution '{distribution}'", hint=f"choose from {', '.join(DISTRIBUTIONS)}")
    cap = max_requests if max_requests is not None else 10_000_000
    if cap < 1:
        raise InputError(f"max requests must be at least 1, got {max_requests}")
    expected = rate * duration_s
    if distribution == "constant":
        n = min(int(math.ceil(expected - 1e-9)), cap)
        return np.arange(n, dtype=np.float64) / rate
    rng = np.random.default_rng(seed)
    # Draw enough gaps that the sum almost surely passes the duration (mean + 6 sigma), then cut.
    n_draw = int(min(expected + 6 * math.sqrt(expected) + 16, cap + 1))
    times = np.cumsum(rng.exponential(1.0 / rate, size=n_draw))
    while times[-1] < duration_s and times.size <= cap:
        more = np.cumsum(rng.exponential(1.0 / rate, size=n_draw)) + times[-1]
        times = np.concatenate([times, more])
    times = times[times < duration_s]
    return times[:cap]


def ensure_loopback(url: str, allow_remote: bool = False) -> None:
    """Refuse a target that resolves to anything but loopback, unless explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "grpc") or not parts.hostname:
        raise InputError(f"'{url}' is not an http(s) or grpc URL", hint="e.g. http://127.0.0.1:8000")
    if allow_remote:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve host '{parts.hostname}': {exc}") from exc
    addrs = {info[4][0] for info in infos}
    remote = sorted(a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise InputError(
            f"'{parts.hostname}' resolves to non-loopback address(es) {remote}; load tests only target this machine by default",
            hint="pass --allow-remote if you own that service and mean to load it",
        )


@dataclass
class RequestTemplate:
    """What every request of a run sends (built once, so the generator spends no time per request on it)."""

    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None
    describe: str = ""
    # "grpc": `content` is a serialized inference.ModelInferRequest, `path` the gRPC method, `headers` its metadata.
    protocol: str = "http"


DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
             "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _datatype(name: str, arr: np.ndarray) -> str:
    if arr.dtype.name not in DATATYPES:
        raise InputError(f"input '{name}' has dtype {arr.dtype}, which KServe v2 cannot carry")
    return DATATYPES[arr.dtype.name]


def _raw(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _shapes(inputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())


class SharedMemoryInputs:
    """The inputs written once into POSIX shared memory and registered with the server (Triton's system
    shared-memory extension), for requests that name the region instead of carrying the bytes. A context manager:
    leaving it unregisters and destroys the regions. `params[name]` is what an input's parameters carry."""

    def __init__(self, base_url: str, inputs: dict[str, np.ndarray], prefix: str = "ppdeploy-load",
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0):
        self.base_url, self.headers, self.timeout_s = base_url.rstrip("/"), dict(headers or {}), timeout_s
        self.inputs = inputs
        self.params: dict[str, dict[str, Any]] = {}
        self._handles: list[tuple[str, Any]] = []
        self._prefix = f"{prefix}-{os.getpid()}"

    def __enter__(self) -> "SharedMemoryInputs":
        import httpx

        try:
            for i, (name, arr) in enumerate(self.inputs.items()):
                raw = np.ascontiguousarray(arr)
                region, key = f"{self._prefix}-{i}", f"/{self._prefix}-{i}"
                handle = shm_utils.create_shared_memory_region(region, key, raw.nbytes)
                self._handles.append((region, handle))
                shm_utils.set_shared_memory_region(handle, [raw])
                resp = httpx.post(f"{self.base_url}/v2/systemsharedmemory/region/{region}/register",
                                  json={"key": key, "offset": 0, "byte_size": raw.nbytes}, headers=self.headers,
                                  timeout=self.timeout_s)
                if resp.status_code != 200:
                    raise PPDeployError(f"registering shared memory region {region} answered {resp.status_code}: "
                                        f"{resp.text[:200]}")
                self.params[name] = {"shared_memory_region": region, "shared_memory_byte_size": raw.nbytes}
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        import httpx

        for region, handle in self._handles:
            try:
                httpx.post(f"{self.base_url}/v2/systemsharedmemory/region/{region}/unregister",
                           headers=self.headers, timeout=self.timeout_s)
            except httpx.HTTPError:
                pass  # the server is gone; its registry went with it
            shm_utils.destroy_shared_memory_region(handle)
        self._handles.clear()


def grpc_v2_request(model: str, inputs: dict[str, np.ndarray],
                    shm: SharedMemoryInputs | None = None) -> RequestTemplate:
    """A gRPC ModelInfer request (raw tensor contents, as tritonclient.grpc sends), serialized once; with `shm`, the
    inputs name their shared-memory regions instead."""
    request = pb.ModelInferRequest(model_name=model)
    for name, arr in inputs.items():
        tensor = request.inputs.add(name=name, datatype=_datatype(name, arr), shape=list(arr.shape))
        if shm is not None:
            tensor.parameters["shared_memory_region"].string_param = shm.params[name]["shared_memory_region"]
            tensor.parameters["shared_memory_byte_size"].int64_param = shm.params[name]["shared_memory_byte_size"]
        else:
            request.raw_input_contents.append(_raw(arr))
    how = "shared memory" if shm is not None else "raw contents"
    return RequestTemplate("POST", GRPC_INFER, request.SerializeToString(), {},
                           describe=f"gRPC ModelInfer {model} {_shapes(inputs)} ({how})", protocol="grpc")


def v2_request(model: str, inputs: dict[str, np.ndarray], binary: bool = True,
               shm: SharedMemoryInputs | None = None) -> RequestTemplate:
    """KServe v2 inference request for numpy inputs.

    binary (default): Triton's binary tensor extension — a JSON header followed by the raw tensor bytes, outputs
    asked back binary too — which is what tritonclient and perf_analyzer send; JSON-encoding a 3x48x320 float
    tensor costs the client and the server far more than running a small model does.
    shm: the inputs name their shared-memory regions (a JSON header only; outputs still come back binary).
    """
    header: dict[str, Any] = {"inputs": []}
    blobs = []
    binary = binary or shm is not None
    for name, arr in inputs.items():
        spec: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": _datatype(name, arr)}
        if shm is not None:
            spec["parameters"] = dict(shm.params[name])
        elif binary:
            raw = _raw(arr)
            spec["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            spec["data"] = arr.ravel().tolist()
        header["inputs"].append(spec)
    headers = {"content-type": "application/octet-stream" if binary else "application/json"}
    if binary:
        header["parameters"] = {"binary_data_output": True}
        head = json.dumps(header).encode()
        content = head + b"".join(blobs)
        headers["inference-header-content-length"] = str(len(head))
    else:
        content = json.dumps(header).encode()
    how = "shared memory" if shm is not None else "binary" if binary else "JSON"
    return RequestTemplate("POST", f"/v2/models/{model}/infer", content, headers,
                           describe=f"v2 infer {model} {_shapes(inputs)} ({how} tensors)")


def image_request(kind: str, image: bytes, filename: str = "image.png", model: str | None = None) -> RequestTemplate:
    """POST an image as the raw body to /v1/ocr[/{model}] or /v1/classify[/{model}] (the cheapest encoding)."""
    if kind not in ("ocr", "classify"):
        raise InputError(f"image requests are for 'ocr' or 'classify', not '{kind}'")
    path = f"/v1/{kind}" + (f"/{model}" if model else "")
    suffix = Path(filename).suffix.lower()
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
            ".webp": "image/webp"}.get(suffix, "application/octet-stream")
    return RequestTemplate("POST", path, image, {"content-type": mime}, describe=f"{kind} {filename} ({len(image)} bytes)")


@dataclass
class RequestRecord:
    scheduled_s: float  # offset from run start
    sent_s: float | None  # when the client actually sent it (None: never sent)
    done_s: float | None
    status: int | None  # HTTP status; None for connection errors / timeouts
    error: str | None = None

    @property
    def latency_ms(self) -> float | None:
        """From the scheduled send time, or from the actual send when a timer fired early (uvloop's timers have
        millisecond resolution), so no latency is ever negative."""
        if self.done_s is None:
            return None
        start = self.scheduled_s if self.sent_s is None else min(self.scheduled_s, self.sent_s)
        return (self.done_s - start) * 1e3


@dataclass
class RateResult:
    offered_rate: float
    distribution: str
    duration_s: float
    scheduled: int
    sent: int
    ok: int
    http_429: int
    http_errors: int  # other non-2xx
    failures: int  # connection errors, timeouts, never completed
    dropped: int  # not sent because too many were in flight (client cap)
    achieved_rps: float  # successful responses per second over the window
    window_s: float
    latency_ms: dict[str, float] | None  # of successful requests, from scheduled send time
    send_lag_ms: dict[str, float] | None  # actual send - scheduled send (generator health)
    error_examples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("latencies_ms")
        else:
            d["latencies_ms"] = [round(x, 3) for x in self.latencies_ms]
        return d


@dataclass(frozen=True)
class LoadSettings:
    timeout_s: float = 30.0  # per request
    drain_s: float = 30.0  # after the last arrival, wait at most this long for stragglers
    max_in_flight: int = 512
    max_requests: int = 100_000
    seed: int = 0
    allow_remote: bool = False
    workers: int = 0  # client processes; 0: default_workers()


def default_workers() -> int:
    """Client processes for a run: one per four cores, 1..8 (a 2-core machine gets 1; a 16-core GPU host 4)."""
    return max(1, min(8, (os.cpu_count() or 2) // 4))


def encode_http_request(template: RequestTemplate, netloc: str) -> bytes:
    """The whole HTTP/1.1 request (request line, headers, body) as bytes, built once per run."""
    body = template.content or b""
    headers = {k.lower(): v for k, v in template.headers.items()}
    if template.files:
        boundary = "ppdeploy-load-boundary-7d3f09a1"
        parts = []
        for field_name, (filename, data, mime) in template.files.items():
            parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
                          f"filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n").encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["content-type"] = f"multipart/form-data; boundary={boundary}"
    for k in ("host", "content-length", "transfer-encoding", "connection"):
        headers.pop(k, None)
    lines = [f"{template.method} {template.path} HTTP/1.1", f"host: {netloc}", f"content-length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _run_rate(base_url: str, template: RequestTemplate, schedule: np.ndarray, settings: LoadSettings) -> list[RequestRecord]:
    """Send `schedule` from `settings.workers` client processes and merge what they recorded.

    The schedule is dealt round-robin (worker i sends arrivals i, i+N, ...), so the merged arrivals are exactly
    the one process drawn from `settings.seed`, whatever N is; all workers share one start time."""
    parts = urlsplit(base_url)
    if parts.scheme != ("grpc" if template.protocol == "grpc" else "http"):
        raise InputError(f"a {template.protocol} request needs a {'grpc' if template.protocol == 'grpc' else 'http'}"
                         f":// target; '{base_url}' is {parts.scheme}", hint="gRPC: grpc://127.0.0.1:8001")
    host, port = parts.hostname, parts.port or (8001 if template.protocol == "grpc" else 80)
    grpc_mode = template.protocol == "grpc"
    request = template.content if grpc_mode else encode_http_request(template, parts.netloc)
    n_workers = max(1, min(settings.workers or default_workers(), schedule.size))
    per_worker_cap = max(1, math.ceil(settings.max_in_flight / n_workers))
    shares = [schedule[i::n_workers] for i in range(n_workers)]
    procs: list[subprocess.Popen] = []
    try:
        for share in shares:
            job = WorkerJob(host, port, request, share.tolist(), settings.timeout_s, settings.drain_s, per_worker_cap,
                            preconnect=min(per_worker_cap, 8), protocol=template.protocol,
                            method=template.path if grpc_mode else "",
                            metadata=tuple((k.lower(), v) for k, v in template.headers.items()) if grpc_mode else ())
            proc = subprocess.Popen([sys.executable, "-m", "ppdeploy.bench.load_worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            procs.append(proc)
        for proc in procs:
            line = proc.stdout.readline()
            if line != b"ready\n":
                raise PPDeployError(f"a load-generator worker did not start (it said {line[:200]!r})")
        # Far enough ahead that every worker has read its start time before the first arrival.
        start = time.monotonic() + 0.05 + 0.01 * n_workers
        for proc in procs:
            proc.stdin.write(f"{start!r}\n".encode())
            proc.stdin.flush()
        results: list[WorkerResult] = []
        for proc in procs:
            data = proc.stdout.read()
            if proc.wait() != 0 or not data:
                raise PPDeployError(f"a load-generator worker failed (exit code {proc.returncode})")
            results.append(pickle.loads(data))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    records: list[RequestRecord] = [None] * schedule.size  # type: ignore[list-item]
    for w, (share, res) in enumerate(zip(shares, results)):
        for j, t in enumerate(share.tolist()):
            sent, done, status = res.sent[j], res.done[j], res.status[j]
            records[w + j * n_workers] = RequestRecord(
                t, None if math.isnan(sent) else sent, None if math.isnan(done) else done,
                status or None, res.errors.get(j))
    return records


def summarize_records(records: Sequence[RequestRecord], rate: float, distribution: str, duration_s: float) -> RateResult:
    ok = [r for r in records if r.status is not None and 200 <= r.status < 300]
    latencies = [r.latency_ms for r in ok if r.latency_ms is not None]
    sent = [r for r in records if r.sent_s is not None]
    lags = [(r.sent_s - r.scheduled_s) * 1e3 for r in sent]
    ends = [r.done_s for r in ok if r.done_s is not None]
    # The window runs from the start of the arrival period (t=0, where the schedule is anchored) to the later
    # of its end and the last completion, so a backlog draining after the period does not hide.
    window = max(max(ends) if ends else 0.0, duration_s)
    examples: list[str] = []
    for r in records:
        if r.error and r.error not in examples:
            examples.append(r.error)
        if len(examples) >= 5:
            break
    return RateResult(
        offered_rate=rate,
        distribution=distribution,
        duration_s=duration_s,
        scheduled=len(records),
        sent=len(sent),
        ok=len(ok),
        http_429=sum(1 for r in records if r.status == 429),
        http_errors=sum(1 for r in records if r.status is not None and r.status >= 300 and r.status != 429),
        failures=sum(1 for r in sent if r.status is None),
        dropped=sum(1 for r in records if r.sent_s is None),
        achieved_rps=round(len(ok) / window, 3) if window > 0 else 0.0,
        window_s=round(window, 3),
        latency_ms=summarize(latencies).to_dict() if latencies else None,
        send_lag_ms=summarize(lags).to_dict() if lags else None,
        error_examples=examples,
        latencies_ms=latencies,
    )


def run_load(base_url: str, template: RequestTemplate, rates: Sequence[float], duration_s: float,
             distribution: str = "poisson", settings: LoadSettings = LoadSettings(),
             on_rate: Callable[[RateResult], None] | None = None) -> list[RateResult]:
    """One open-loop run per offered rate, in order; returns a result per rate."""
    ensure_loopback(base_url, settings.allow_remote)
    if not rates:
        raise InputError("no offered rate given")
    results = []
    for rate in rates:
        schedule = arrival_schedule(rate, duration_s, distribution, seed=settings.seed, max_requests=settings.max_requests)
        if schedule.size == 0:
            raise InputError(f"rate {rate}/s over {duration_s}s schedules no request", hint="raise --rate or --duration")
        records = _run_rate(base_url, template, schedule, settings)
        res = summarize_records(records, rate, distribution, duration_s)
        results.append(res)
        if on_rate:
            on_rate(res)
    return results


def fetch_v2_inputs(base_url: str, model: str, batch: int = 1, timeout_s: float = 30.0,
                    shape_overrides: dict[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Ask a KServe v2 server for the model's inputs and make one random request body from them."""
    import httpx

    try:
        resp = httpx.get(f"{base_url.rstrip('/')}/v2/models/{model}", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise PPDeployError(f"cannot reach {base_url}: {exc}") from exc
    if resp.status_code != 200:
        raise PPDeployError(f"GET /v2/models/{model} answered {resp.status_code}: {resp.text[:200]}")
    meta = resp.json()
    dtypes = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
              "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
    rng = np.random.default_rng(0)
    out = {}
    for spec in meta.get("inputs", []):
        name = spec["name"]
        if shape_overrides and name in shape_overrides:
            shape = [batch, *shape_overrides[name]]
        else:
            dims_ = list(spec.get("shape", []))
            if any(int(d) < 0 for d in dims_[1:]):
                raise InputError(f"input '{name}' has dynamic dims {dims_}", hint=f"give its shape with --shape {name}=CxHxW")
            shape = [batch, *[int(d) for d in dims_[1:]]]
        dtype = dtypes.get(spec.get("datatype", "FP32"))
        if dtype is None:
            raise InputError(f"input '{name}' has unsupported datatype {spec.get('datatype')}")
        out[name] = rng.random(shape).astype(dtype) if np.dtype(dtype).kind == "f" else np.zeros(shape, dtype)
    if not out:
        raise PPDeployError(f"model '{model}' metadata lists no inputs")
    return out


def load_image_bytes(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    if not data:
        raise InputError(f"image {path} is empty")
    return data
