"""The two serving benchmarks of issue 6, callable from code (`ppdeploy.bench`) or as
`python -m ppdeploy.bench.serving overhead|batching [--json out.json]`.

- `overhead_benchmark`: p50 of the raw runner (in process, batch 1) against p50 of the same model behind the
  server (one sequential keep-alive client sending binary tensors, so the client adds as little as possible).
  Reported: both p50s, their difference, and the server-side time from the access log.
- `ceiling_benchmark`: the server's own ceiling — a near-free ONNX model (one ReduceMax) behind the server, offered
  increasing Poisson rates by the multi-process load generator; reported: what it sustains, latency, and the
  server process's CPU time per answered request.
- `transport_benchmark`: the same near-free model (so what differs is the transport) at large tensors — a det page,
  a batch of rec lines — sent as binary HTTP, gRPC raw contents, and from system shared memory over either, at
  offered Poisson rates; reported: achieved rate, latency and the server's CPU time per request.
- `batching_benchmark`: open-loop Poisson load (`ppdeploy.bench.load`) on the same model served twice — with
  dynamic batching and with `max_batch_size: 1` — over a ladder of offered rates. For a p99 budget, each
  configuration's throughput is the highest achieved rate whose p99 stays within it; the ratio is the gain.

Servers run as subprocesses (`python -m ppdeploy serve --repo ...`), so the client and the server do not share
a GIL; on a small machine they still share cores, which the report states.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ppdeploy.bench.load import (
    LoadSettings,
    RequestTemplate,
    SharedMemoryInputs,
    default_workers,
    grpc_v2_request,
    run_load,
    v2_request,
)
from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.core.errors import PPDeployError
from ppdeploy.deploy.load import load_model
from ppdeploy.serve.kserve import kserve_datatype


def binary_infer_body(inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A KServe v2 request with every input as binary data and binary outputs (what tritonclient sends)."""
    header = {"inputs": [{"name": n, "datatype": kserve_datatype(a.dtype), "shape": list(a.shape),
                          "parameters": {"binary_data_size": a.nbytes}} for n, a in inputs.items()],
              "parameters": {"binary_data_output": True}}
    text = json.dumps(header).encode()
    return text + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values()), len(text)


def binary_request_template(model: str, inputs: dict[str, np.ndarray]):
    """`ppdeploy.bench.load.RequestTemplate` for a binary-tensor infer request."""
    body, header_len = binary_infer_body(inputs)
    return RequestTemplate("POST", f"/v2/models/{model}/infer", body,
                           {"inference-header-content-length": str(header_len), "accept-encoding": "identity",
                            "content-type": "application/octet-stream"},
                           describe=f"v2 binary infer {model} " + ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items()))


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def access_log_ms(self, path_suffix: str = "/infer") -> list[float]:
        out = []
        for line in self.lines:
            if line.startswith('{"ts"'):
                entry = json.loads(line)
                if entry["path"].endswith(path_suffix) and entry["status"] == 200:
                    out.append(entry["ms"])
        return out


@contextmanager
def running_server(configs: Sequence[str], timeout_s: float = 300, extra_args: Sequence[str] = ()) -> Iterator[RunningServer]:
    """Serve a repository made of `configs` (config.yaml texts, keyed model name = folder) in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="ppdeploy-loadtest-") as tmp:
        for text in configs:
            name = re.search(r"^name:\s*(\S+)", text, re.M)
            if not name:
                raise PPDeployError("each benchmark config needs a 'name:' line")
            (Path(tmp) / name.group(1)).mkdir()
            (Path(tmp) / name.group(1) / "config.yaml").write_text(text)
        args = [a for a in extra_args if a != "--no-access-log"]
        with ServerProcess(["--repo", tmp, *args], ready_timeout_s=timeout_s,
                           access_log="--no-access-log" not in extra_args) as proc:
            yield RunningServer(proc.url, proc.proc, proc.lines)  # the same list: access-log lines keep arriving


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Overhead: server p50 - raw runner p50
# ----------------------------------------------------------------------------------------------------------
@dataclass
class OverheadResult:
    model: str
    backend: str
    shape: list[int]
    requests: int
    raw_p50_ms: float
    server_p50_ms: float
    overhead_p50_ms: float
    server_side_p50_ms: float  # from the access log: first byte in to last byte out, inside the server
    raw_p99_ms: float
    server_p99_ms: float


def overhead_benchmark(model: str = "ppocr-cls", shape: Sequence[int] = (1, 3, 48, 192), backend: str = "onnxruntime",
                       requests: int = 2000, warmup: int = 200, threads: int | None = None,
                       inline_max_ms: float = 1.0, chunk: int = 200) -> OverheadResult:
    """Raw and served calls alternate in chunks of `chunk`, so drifting background load hits both alike."""
    dep = load_model(model, backend=backend, threads=threads)
    name = dep.runner.io.inputs[0].name
    out_name = dep.runner.io.outputs[0].name
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    want = dep.runner.infer({name: x})[out_name]
    config = (f"name: m\nsource: {model}\nbackends: [{backend}]\nmax_batch_size: 8\n"
              f"dynamic_batching: {{inline_max_ms: {inline_max_ms}}}\n" + (f"threads: {threads}\n" if threads else ""))
    body, header_len = binary_infer_body({name: x})
    headers = {"Inference-Header-Content-Length": str(header_len), "Content-Type": "application/octet-stream"}
    raw: list[float] = []
    lat: list[float] = []
    try:
        with running_server([config]) as server:
            conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)

            def served(n: int, keep: bool) -> bytes:
                payload = b""
                for _ in range(n):
                    t = time.perf_counter()
                    conn.request("POST", "/v2/models/m/infer", body, headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    if keep:
                        lat.append((time.perf_counter() - t) * 1e3)
                    if resp.status != 200:
                        raise PPDeployError(f"server answered {resp.status}: {payload[:200]!r}")
                return payload[int(resp.getheader("Inference-Header-Content-Length")):]

            def direct(n: int, keep: bool) -> None:
                for _ in range(n):
                    t = time.perf_counter()
                    dep.runner.infer({name: x})
                    if keep:
                        raw.append((time.perf_counter() - t) * 1e3)

            direct(warmup, False)
            served(warmup, False)
            logged_before = len(server.access_log_ms())
            while len(raw) < requests:
                n = min(chunk, requests - len(raw))
                direct(n, True)
                last = served(n, True)
            conn.close()
            got = np.frombuffer(last, dtype=np.float32).reshape(want.shape)
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                raise PPDeployError("server output differs from the raw runner's")
            time.sleep(0.5)  # let the access log lines arrive
            server_side = server.access_log_ms()[logged_before:]
    finally:
        dep.close()
    raw_p50, srv_p50 = _percentile(raw, 50), _percentile(lat, 50)
    return OverheadResult(model, backend, list(shape), requests, round(raw_p50, 3), round(srv_p50, 3),
                          round(srv_p50 - raw_p50, 3), round(_percentile(server_side, 50), 3),
                          round(_percentile(raw, 99), 3), round(_percentile(lat, 99), 3))


# ----------------------------------------------------------------------------------------------------------
# Dynamic batching vs max_batch_size 1 under open-loop Poisson load
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LadderPoint:
    offered_rps: float
    achieved_rps: float
    p50_ms: float | None
    p99_ms: float | None
    ok: int
    errors: int
    mean_batch: float | None


@dataclass
class BatchingResult:
    model: str
    backend: str
    shape: list[int]
    duration_s: float
    p99_budget_ms: float
    batched_config: str
    unbatched_config: str
    batched: list[LadderPoint]
    unbatched: list[LadderPoint]
    batched_rps_at_budget: float
    unbatched_rps_at_budget: float
    gain: float | None


def _mean_batch(url: str, model: str) -> tuple[float, float]:
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("ppdeploy_batch_size_count") and f'model="{model}"' in line:
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("ppdeploy_batch_size_sum") and f'model="{model}"' in line:
            total = float(line.rsplit(" ", 1)[1])
    return count, total


def _point(url: str, template, rate: float, duration_s: float, model: str, seed: int) -> LadderPoint:
    c0, s0 = _mean_batch(url, model)
    [res] = run_load(url, template, [rate], duration_s,
                     settings=LoadSettings(timeout_s=60, drain_s=30, max_in_flight=1024, seed=seed))
    c1, s1 = _mean_batch(url, model)
    lat = res.latency_ms or {}
    return LadderPoint(rate, res.achieved_rps, lat.get("p50"), lat.get("p99"), res.ok, res.scheduled - res.ok,
                       round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None)


def _median_point(points: Sequence[LadderPoint]) -> LadderPoint:
    """The repetition with the median p99 (a whole run, so its numbers stay consistent with each other)."""
    ranked = sorted(points, key=lambda p: float("inf") if p.p99_ms is None else p.p99_ms)
    return ranked[(len(ranked) - 1) // 2]


def _warm(url: str, template, max_batch: int) -> None:
    """Send bursts of 1..max_batch simultaneous requests, so every batch size has run once before timing starts
    (OpenVINO and TensorRT specialise per input shape on first use)."""
    from concurrent.futures import ThreadPoolExecutor

    host = url.removeprefix("http://")

    def one(_):
        conn = http.client.HTTPConnection(host, timeout=120)
        conn.request(template.method, template.path, template.content, template.headers)
        conn.getresponse().read()
        conn.close()

    with ThreadPoolExecutor(max_batch) as pool:
        for _ in range(2):
            for k in range(1, max_batch + 1):
                list(pool.map(one, range(k)))


def _best_within(points: Sequence[LadderPoint], budget_ms: float) -> float:
    good = [p.achieved_rps for p in points if p.p99_ms is not None and p.p99_ms <= budget_ms and p.errors == 0]
    return max(good) if good else 0.0


def batching_benchmark(model: str = "ppocrv4-rec", shape: Sequence[int] = (1, 3, 48, 320),
                       backend: str = "openvino", rates: Sequence[float] = (10, 20, 30, 40, 50, 60, 80, 100, 120),
                       duration_s: float = 8.0, p99_budget_ms: float = 500.0, max_batch_size: int = 16,
                       max_queue_delay_ms: float = 5.0, threads: int | None = None, repeats: int = 2,
                       seed: int = 0) -> BatchingResult:
    """Both servers run side by side (one idle while the other is measured) and the rates are interleaved
    A, B, A, B...: on a shared machine whose background load drifts, both configurations see the same drift."""
    x = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
    template = binary_request_template("m", {"x": x})
    common = f"source: {model}\nbackends: [{backend}]\n" + (f"threads: {threads}\n" if threads else "")
    batched_cfg = (f"name: m\n{common}max_batch_size: {max_batch_size}\n"
                   f"dynamic_batching: {{max_queue_delay_ms: {max_queue_delay_ms}, max_queue_size: 4096}}\n")
    unbatched_cfg = f"name: m\n{common}max_batch_size: 1\ndynamic_batching: {{max_queue_size: 4096}}\n"
    ladders: dict[str, list[LadderPoint]] = {"batched": [], "unbatched": []}
    with running_server([batched_cfg], extra_args=["--no-access-log"]) as batched, \
            running_server([unbatched_cfg], extra_args=["--no-access-log"]) as unbatched:
        servers = {"batched": batched.url, "unbatched": unbatched.url}
        _warm(batched.url, template, max_batch_size)
        _warm(unbatched.url, template, 1)
        saturated: set[str] = set()
        for rate in rates:
            reps: dict[str, list[LadderPoint]] = {k: [] for k in servers}
            for r in range(repeats):
                for label, url in servers.items():
                    if label not in saturated:
                        reps[label].append(_point(url, template, rate, duration_s, "m", seed + r))
            for label, points in reps.items():
                if points:
                    p = _median_point(points)
                    ladders[label].append(p)
                    if p.ok < 0.5 * rate * duration_s:  # far past saturation: higher rates only add queueing
                        saturated.add(label)
            if len(saturated) == len(servers):
                break
    b = _best_within(ladders["batched"], p99_budget_ms)
    u = _best_within(ladders["unbatched"], p99_budget_ms)
    return BatchingResult(model, backend, list(shape), duration_s, p99_budget_ms, batched_cfg, unbatched_cfg,
                          ladders["batched"], ladders["unbatched"], b, u, round(b / u, 2) if u else None)


# ----------------------------------------------------------------------------------------------------------
# The server's own ceiling: a near-free model, so what is measured is the HTTP + protocol + batcher path
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CeilingPoint:
    offered_rps: float
    achieved_rps: float
    p50_ms: float | None
    p99_ms: float | None
    lost: int
    server_cpu_us_per_request: float | None  # user + system CPU of the server process / answered requests


@dataclass
class CeilingResult:
    input_shape: list[int]
    output_shape: list[int]
    max_batch_size: int
    duration_s: float
    workers: int
    points: list[CeilingPoint]


def near_free_model(path: Path, input_shape: Sequence[int] = (3, 48, 192), output_elems: int = 2) -> Path:
    """An ONNX model that costs next to nothing to run (a ReduceMax, then an Expand to `output_elems` floats
    per row): x [N, *input_shape] float32 -> y [N, output_elems]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *input_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, output_elems])
    axes = list(range(1, len(input_shape) + 1))
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, axes=axes),
             helper.make_node("Unsqueeze", ["m", "one"], ["u"]),
             helper.make_node("Expand", ["u", "shape"], ["y"])]
    inits = [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("shape", TensorProto.INT64, [2], [1, output_elems])]
    model = helper.make_model(helper.make_graph(nodes, "near_free", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # not Linux
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ceiling_benchmark(rates: Sequence[float] = (500, 1000, 2000, 3000, 4000), duration_s: float = 4.0,
                      max_batch_size: int = 1, input_shape: Sequence[int] = (3, 48, 192), output_elems: int = 2,
                      workers: int = 0) -> CeilingResult:
    """Offer increasing Poisson rates to a server whose model is near free (ONNX Runtime, one thread) and record
    what it sustains and how much CPU the server process spends per request."""
    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="ppdeploy-ceiling-") as tmp:
        model = near_free_model(Path(tmp) / "near_free.onnx", input_shape, output_elems)
        config = (f"name: m\nsource: {model}\nbackends: [onnxruntime]\nthreads: 1\nmax_batch_size: {max_batch_size}\n"
                  f"dynamic_batching: {{max_queue_size: 8192}}\n")
        x = np.random.default_rng(0).standard_normal((1, *input_shape), dtype=np.float32)
        template = binary_request_template("m", {"x": x})
        points = []
        with running_server([config], extra_args=["--no-access-log"]) as server:
            settings = LoadSettings(timeout_s=20, drain_s=10, max_in_flight=2048, workers=workers)
            run_load(server.url, template, [min(rates)], 1.0, settings=settings)  # warm-up, not recorded
            for rate in rates:
                c0 = _process_cpu_s(server.process.pid)
                [res] = run_load(server.url, template, [rate], duration_s, settings=settings)
                c1 = _process_cpu_s(server.process.pid)
                lat = res.latency_ms or {}
                cpu = round((c1 - c0) / res.ok * 1e6, 1) if c0 is not None and c1 is not None and res.ok else None
                points.append(CeilingPoint(rate, res.achieved_rps, lat.get("p50"), lat.get("p99"),
                                           res.scheduled - res.ok, cpu))
                if res.achieved_rps < 0.8 * res.scheduled / duration_s:
                    break  # past the ceiling
    return CeilingResult([1, *input_shape], [1, output_elems], max_batch_size, duration_s, workers, points)


# ----------------------------------------------------------------------------------------------------------
# Transports: binary HTTP vs gRPC, bytes vs system shared memory, at large tensors
# ----------------------------------------------------------------------------------------------------------
TRANSPORT_CASES = {"det page": (1, 3, 960, 960), "rec lines": (8, 3, 48, 320)}
TRANSPORTS = ("http binary", "grpc raw", "http shm", "grpc shm")


@dataclass
class TransportPoint:
    case: str
    shape: list[int]
    transport: str
    offered_rps: float
    achieved_rps: float
    p50_ms: float | None
    p99_ms: float | None
    lost: int
    server_cpu_us_per_request: float | None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transport_benchmark(rates: dict[str, Sequence[float]] | None = None, duration_s: float = 3.0,
                        cases: dict[str, Sequence[int]] | None = None, transports: Sequence[str] = TRANSPORTS,
                        workers: int = 0) -> list[TransportPoint]:
    """Each case's tensor through each transport at each offered rate, against one server (HTTP + gRPC) whose
    model is near free, so the numbers are the cost of moving the tensor: encode, send, receive, decode."""
    cases = dict(cases or TRANSPORT_CASES)
    rates = dict(rates or {"det page": (20, 60), "rec lines": (50, 150)})
    workers = workers or default_workers()
    points: list[TransportPoint] = []
    with tempfile.TemporaryDirectory(prefix="ppdeploy-transport-") as tmp:
        configs = []
        for i, shape in enumerate(cases.values()):
            model = near_free_model(Path(tmp) / f"m{i}.onnx", shape[1:], 2)
            configs.append(f"name: m{i}\nsource: {model}\nbackends: [onnxruntime]\nthreads: 1\n"
                           f"max_batch_size: {max(8, shape[0])}\ndynamic_batching: {{max_queue_size: 4096}}\n")
        grpc_port = _free_port()
        with running_server(configs, extra_args=["--no-access-log", "--grpc-port", str(grpc_port)]) as server:
            settings = LoadSettings(timeout_s=20, drain_s=10, max_in_flight=512, workers=workers)
            for i, (case, shape) in enumerate(cases.items()):
                x = np.random.default_rng(i).standard_normal(shape, dtype=np.float32)
                for transport in transports:
                    proto, how = transport.split()
                    url = f"grpc://127.0.0.1:{grpc_port}" if proto == "grpc" else server.url
                    shm = SharedMemoryInputs(server.url, {"x": x}, prefix=f"ppdeploy-transport-{i}") \
                        if how == "shm" else None
                    with shm or _nothing():
                        template = grpc_v2_request(f"m{i}", {"x": x}, shm) if proto == "grpc" else \
                            v2_request(f"m{i}", {"x": x}, shm=shm)
                        run_load(url, template, [min(rates[case])], 1.0, settings=settings)  # warm-up
                        for rate in rates[case]:
                            c0 = _process_cpu_s(server.process.pid)
                            [res] = run_load(url, template, [rate], duration_s, settings=settings)
                            c1 = _process_cpu_s(server.process.pid)
                            lat = res.latency_ms or {}
                            cpu = (round((c1 - c0) / res.ok * 1e6, 1)
                                   if c0 is not None and c1 is not None and res.ok else None)
                            points.append(TransportPoint(case, list(shape), transport, rate, res.achieved_rps,
                                                         lat.get("p50"), lat.get("p99"), res.scheduled - res.ok, cpu))
    return points


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def transport_table(points: Sequence[TransportPoint]) -> str:
    rows = ["| case | transport | offered req/s | achieved req/s | p50 ms | p99 ms | lost | server CPU us/request |",
            "|---|---|---|---|---|---|---|---|"]
    for p in points:
        rows.append(f"| {p.case} {'x'.join(map(str, p.shape))} | {p.transport} | {p.offered_rps:g} | "
                    f"{p.achieved_rps:.1f} | {p.p50_ms} | {p.p99_ms} | {p.lost} | {p.server_cpu_us_per_request} |")
    return "\n".join(rows)


def _table(points: Sequence[LadderPoint]) -> str:
    rows = ["| offered req/s | achieved req/s | p50 ms | p99 ms | mean batch | failed |", "|---|---|---|---|---|---|"]
    for p in points:
        rows.append(f"| {p.offered_rps:g} | {p.achieved_rps:.1f} | {p.p50_ms if p.p50_ms is not None else '-'} | "
                    f"{p.p99_ms if p.p99_ms is not None else '-'} | {p.mean_batch or '-'} | {p.errors} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppdeploy.bench.serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["overhead", "batching", "ceiling", "transport"])
    ap.add_argument("--model")
    ap.add_argument("--backend", help="default: onnxruntime for overhead, openvino for batching (it gains from "
                                      "batches on CPU; ONNX Runtime's CPU kernels barely do)")
    ap.add_argument("--repeats", type=int, default=2, help="batching: runs per rate and configuration (median)")
    ap.add_argument("--shape", help="input shape, e.g. 1x3x48x320")
    ap.add_argument("--requests", type=int, default=2000, help="overhead: timed requests")
    ap.add_argument("--rates", help="batching: comma-separated offered rates (req/s)")
    ap.add_argument("--duration", type=float, default=8.0, help="batching: seconds per rate")
    ap.add_argument("--p99-budget-ms", type=float, default=500.0)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inline-max-ms", type=float, default=1.0, help="overhead: the config's inline_max_ms")
    ap.add_argument("--output-elems", type=int, default=2, help="ceiling: floats per row in the response")
    ap.add_argument("--workers", type=int, default=0, help="ceiling: load-generator processes (0: one per 4 cores)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    shape = tuple(int(d) for d in args.shape.split("x")) if args.shape else None
    if args.which == "overhead":
        res = overhead_benchmark(args.model or "ppocr-cls", shape or (1, 3, 48, 192), args.backend or "onnxruntime",
                                 args.requests,
                                 threads=args.threads, inline_max_ms=args.inline_max_ms)
        print(json.dumps(asdict(res), indent=2))
    elif args.which == "transport":
        res = transport_benchmark(duration_s=args.duration, workers=args.workers)
        print(transport_table(res))
        res = {"points": [asdict(p) for p in res]}
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    elif args.which == "ceiling":
        kw = {"rates": [float(r) for r in args.rates.split(",")]} if args.rates else {}
        res = ceiling_benchmark(duration_s=args.duration, max_batch_size=args.max_batch_size,
                                input_shape=(shape or (1, 3, 48, 192))[1:], output_elems=args.output_elems,
                                workers=args.workers, **kw)
        print("| offered req/s | achieved req/s | p50 ms | p99 ms | lost | server CPU us/request |\n|---|---|---|---|---|---|")
        for p in res.points:
            print(f"| {p.offered_rps:g} | {p.achieved_rps:.1f} | {p.p50_ms} | {p.p99_ms} | {p.lost} | "
                  f"{p.server_cpu_us_per_request} |")
    else:
        kw = {}
        if args.rates:
            kw["rates"] = [float(r) for r in args.rates.split(",")]
        res = batching_benchmark(args.model or "ppocrv4-rec", shape or (1, 3, 48, 320), args.backend or "openvino",
                                 duration_s=args.duration, repeats=args.repeats, p99_budget_ms=args.p99_budget_ms,
                                 max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                                 threads=args.threads, **kw)
        print("dynamic batching:\n" + _table(res.batched) + "\n\nmax_batch_size 1:\n" + _table(res.unbatched))
        print(f"\nthroughput within p99 <= {res.p99_budget_ms} ms: batched {res.batched_rps_at_budget} req/s, "
              f"unbatched {res.unbatched_rps_at_budget} req/s, gain {res.gain}x")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
