"""Real load tests against a real HTTP server on 127.0.0.1 (a small KServe-v2-shaped server from the standard
library, so the generator is tested independently of ppdeploy's own server)."""
from __future__ import annotations

import io
import json
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import numpy as np
import pytest

from ppdeploy.bench.load import LoadSettings, fetch_v2_inputs, run_load, v2_request
from ppdeploy.core.errors import InputError

SERVICE_S = 0.04


def decode_v2(body: bytes, header_length: str | None) -> np.ndarray:
    """The one input of a KServe v2 request: JSON `data`, or Triton's binary extension (header + raw bytes)."""
    if header_length is None:
        req = json.loads(body)
        spec = req["inputs"][0]
        return np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    n = int(header_length)
    req = json.loads(body[:n])
    spec = req["inputs"][0]
    size = spec["parameters"]["binary_data_size"]
    assert n + size == len(body)
    return np.frombuffer(body[n:n + size], dtype="<f4").reshape(spec["shape"])


def make_server(threaded: bool, capacity: int = 1000, service_s: float = SERVICE_S):
    slots = threading.BoundedSemaphore(capacity)
    served = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v2/models/m":
                self._reply(200, {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                                  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})
            else:
                self._reply(404, {"error": "no route"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != "/v2/models/m/infer":
                self._reply(404, {"error": "no route"})
                return
            if not slots.acquire(blocking=False):
                self._reply(429, {"error": "queue full"})
                return
            try:
                x = decode_v2(body, self.headers.get("inference-header-content-length"))
                time.sleep(service_s)
                served.append(time.perf_counter())
                self._reply(200, {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32",
                                                                 "shape": [x.shape[0]], "data": x.sum(1).tolist()}]})
            finally:
                slots.release()

    cls = ThreadingHTTPServer if threaded else HTTPServer
    cls = type("Server", (cls,), {"request_queue_size": 256, "daemon_threads": True})
    server = cls(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, served


@pytest.fixture
def serial_server():
    server, served = make_server(threaded=False)
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


@pytest.fixture
def limited_server():
    server, served = make_server(threaded=True, capacity=2, service_s=0.1)
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


@pytest.fixture
def roomy_server():
    server, served = make_server(threaded=True, capacity=1000, service_s=0.005)
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_open_loop_shows_queueing_from_scheduled_time(serial_server):
    """A one-at-a-time server offered twice its capacity builds a queue; the generator keeps sending on schedule
    and charges the wait to the requests (a closed loop would report ~one service time for every request)."""
    url, served = serial_server
    inputs = fetch_v2_inputs(url, "m", batch=2)  # from the server's metadata: x of shape [2, 4]
    assert inputs["x"].shape == (2, 4)
    rate, duration = 50.0, 0.6  # 30 arrivals; the server needs >= 30 * 40 ms = 1.2 s for them
    [res] = run_load(url, v2_request("m", inputs), [rate], duration, "constant", LoadSettings(timeout_s=20, drain_s=20))
    assert res.scheduled == 30 and res.sent == 30
    assert res.ok == 30 and res.failures == 0 and res.http_429 == 0
    assert len(served) == 30
    lat = sorted(res.latencies_ms)
    assert lat[0] >= SERVICE_S * 1e3 * 0.9  # nobody is faster than one service time
    # the last arrival (t=0.58 s) cannot finish before 30 services (1.2 s): >= 0.6 s from its scheduled time
    assert lat[-1] >= (30 * SERVICE_S - 0.58) * 1e3 * 0.9
    assert res.latency_ms["p99"] > 5 * SERVICE_S * 1e3
    # the generator itself was not the bottleneck: it sent (nearly) on time
    assert res.send_lag_ms["p50"] < 50


def test_429_and_errors_are_counted(limited_server):
    url, _ = limited_server
    [res] = run_load(url, v2_request("m", {"x": np.zeros((1, 4), np.float32)}), [40.0], 0.5, "constant",
                     LoadSettings(timeout_s=20, drain_s=20))
    assert res.scheduled == 20
    assert res.http_429 > 0 and res.ok > 0
    assert res.ok + res.http_429 == 20
    assert res.failures == 0 and res.http_errors == 0
    assert any("429" in e for e in res.error_examples)
    # an unknown model is an HTTP error, not a success
    [bad] = run_load(url, v2_request("nope", {"x": np.zeros((1, 4), np.float32)}), [20.0], 0.2, "constant")
    assert bad.ok == 0 and bad.http_errors == bad.sent == 4


def test_v2_request_encodings_carry_the_tensor():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    binary = v2_request("m", {"x": x})
    assert binary.path == "/v2/models/m/infer"
    got = decode_v2(binary.content, binary.headers["inference-header-content-length"])
    assert np.array_equal(got, x)
    header = json.loads(binary.content[:int(binary.headers["inference-header-content-length"])])
    assert header["parameters"]["binary_data_output"] is True and header["inputs"][0]["datatype"] == "FP32"
    as_json = v2_request("m", {"x": x}, binary=False)
    assert np.allclose(decode_v2(as_json.content, None), x)
    with pytest.raises(InputError):
        v2_request("m", {"x": np.array(["a"])})


def test_unreachable_server_counts_failures():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    [res] = run_load(f"http://127.0.0.1:{port}", v2_request("m", {"x": np.zeros((1, 4), np.float32)}), [20.0], 0.2,
                     "constant", LoadSettings(timeout_s=2, drain_s=2))
    assert res.ok == 0 and res.failures == res.sent == 4
    assert res.latency_ms is None


def test_remote_target_refused_without_flag():
    with pytest.raises(InputError, match="loopback"):
        run_load("http://192.0.2.10:8000", v2_request("m", {"x": np.zeros((1, 4), np.float32)}), [1.0], 1.0)


def test_loadtest_cli_writes_report(roomy_server, tmp_path, capsys):
    from ppdeploy.cli import main

    url, served = roomy_server
    out = tmp_path / "lt"
    code = main(["loadtest", url, "--model", "m", "--sweep", "20,40", "--duration", "0.5", "--distribution",
                 "poisson", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "loadtest.json").read_text())
    assert [r["offered_rate"] for r in data["rates"]] == [20.0, 40.0]
    for r in data["rates"]:
        assert r["ok"] == r["scheduled"] > 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert len(served) == sum(r["ok"] for r in data["rates"])
    png = (out / "loadtest_latency_vs_load.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    md = (out / "loadtest.md").read_text()
    assert "latency vs offered load" in md and "| offered /s |" in md
    printed = capsys.readouterr().out
    assert "offered 20/s" in printed and "offered 40/s" in printed


def test_loadtest_cli_rejects_bad_arguments(roomy_server, tmp_path):
    from ppdeploy.cli import main

    url, _ = roomy_server
    assert main(["loadtest", url, "--model", "m", "--out", str(tmp_path)]) == 2  # no rate
    assert main(["loadtest", url, "--rate", "5", "--out", str(tmp_path)]) == 2  # v2 without model
    assert main(["loadtest", "http://192.0.2.10:1", "--model", "m", "--rate", "5", "--out", str(tmp_path)]) == 2
    assert main(["loadtest", url, "--model", "m", "--sweep", "a,b", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_loadtest_against_ppdeploy_serve(tmp_path):
    """The generator against ppdeploy's own server (a child `ppdeploy serve` on a free loopback port)."""
    from ppdeploy.bench.server_process import ServerProcess
    from ppdeploy.cli import main

    with ServerProcess(["ppocr-cls", "--backend", "onnxruntime", "--max-batch-size", "4"], ready_timeout_s=600) as srv:
        inputs = fetch_v2_inputs(srv.url, "ppocr-cls", 1, shape_overrides={"x": (3, 48, 192)})
        assert inputs["x"].shape == (1, 3, 48, 192)
        [res] = run_load(srv.url, v2_request("ppocr-cls", inputs), [20.0], 1.0, "constant",
                         LoadSettings(timeout_s=60, drain_s=60))
        assert res.ok == res.scheduled == 20, res.error_examples
        assert res.http_429 == res.failures == res.http_errors == 0
        out = tmp_path / "lt"
        assert main(["loadtest", srv.url, "--model", "ppocr-cls", "--shape", "x=3x48x192", "--rate", "10",
                     "--duration", "0.5", "--out", str(out)]) == 0
        data = json.loads((out / "loadtest.json").read_text())
        assert data["rates"][0]["ok"] == data["rates"][0]["scheduled"] > 0
    assert srv.exit_code == 0  # SIGTERM drains and exits cleanly


def make_keepalive_chunked_server():
    """HTTP/1.1 with keep-alive, answering with chunked bodies; records the client port of every request."""
    ports = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b'{"outputs":', b' []}'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")

    cls = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 256, "daemon_threads": True})
    server = cls(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ports


def test_several_worker_processes_share_one_schedule_over_keep_alive_connections():
    """Three client processes send one constant schedule between them; every request is answered (chunked
    framing parsed), the records come back in schedule order, and connections are reused, not one per request."""
    server, ports = make_keepalive_chunked_server()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        [res] = run_load(url, v2_request("m", {"x": np.zeros((1, 4), np.float32)}), [100.0], 0.6, "constant",
                         LoadSettings(timeout_s=20, drain_s=20, workers=3))
    finally:
        server.shutdown()
        server.server_close()
    assert res.scheduled == res.sent == res.ok == 60, res.error_examples
    assert len(ports) == 60
    assert len(set(ports)) < 30  # keep-alive: each worker reuses its few connections
    assert min(res.latencies_ms) >= 0
    assert res.send_lag_ms["p50"] < 50


def test_worker_records_merge_in_schedule_order():
    from ppdeploy.bench.load import _run_rate, arrival_schedule

    server, ports = make_keepalive_chunked_server()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        schedule = arrival_schedule(50.0, 0.5, "poisson", seed=3)
        records = _run_rate(url, v2_request("m", {"x": np.zeros((1, 4), np.float32)}), schedule,
                            LoadSettings(timeout_s=20, drain_s=20, workers=2))
    finally:
        server.shutdown()
        server.server_close()
    assert [r.scheduled_s for r in records] == schedule.tolist()
    assert all(r.status == 200 and r.sent_s is not None and r.done_s >= r.sent_s for r in records)


def test_near_free_model_of_the_ceiling_benchmark(tmp_path):
    import onnxruntime as ort

    from ppdeploy.bench.serving import near_free_model

    path = near_free_model(tmp_path / "m.onnx", (3, 8, 8), output_elems=5)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    [y] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (2, 5)
    np.testing.assert_allclose(y, np.repeat(x.reshape(2, -1).max(1, keepdims=True), 5, axis=1))


def test_latency_counts_from_the_scheduled_time_or_an_early_send():
    from ppdeploy.bench.load import RequestRecord

    late = RequestRecord(scheduled_s=1.0, sent_s=1.2, done_s=1.25, status=200)
    assert late.latency_ms == pytest.approx(250.0)  # the client's own lag is charged to the request
    early = RequestRecord(scheduled_s=1.0, sent_s=0.999, done_s=0.9995, status=200)  # a timer fired 1 ms early
    assert early.latency_ms == pytest.approx(0.5)
    assert RequestRecord(1.0, None, None, None).latency_ms is None


def test_a_slow_answer_is_a_timeout_failure():
    server, served = make_server(threaded=True, service_s=1.0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        [res] = run_load(url, v2_request("m", {"x": np.zeros((1, 4), np.float32)}), [10.0], 0.3, "constant",
                         LoadSettings(timeout_s=0.2, drain_s=1))
    finally:
        server.shutdown()
        server.server_close()
    assert res.sent == res.scheduled == 3
    assert res.ok == 0 and res.failures == 3
    assert any("no complete response within 0.2 s" in e for e in res.error_examples), res.error_examples


class _ShortWrites(io.RawIOBase):
    """A raw file that, like a pipe written through an unbuffered FileIO, takes at most `chunk` bytes per write."""

    def __init__(self, chunk: int):
        self.chunk, self.data = chunk, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        taken = bytes(b[:self.chunk])
        self.data += taken
        return len(taken)


def test_load_worker_writes_its_whole_result_through_short_writes():
    from ppdeploy.bench.load_worker import WorkerResult, write_all

    result = WorkerResult([0.1] * 5000, [0.2] * 5000, [429] * 5000, {i: "HTTP 429: queue is full" for i in range(5000)})
    data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    naive = _ShortWrites(65536)
    pickle.dump(result, naive, protocol=pickle.HIGHEST_PROTOCOL)  # what the worker did: the short write is lost
    assert len(naive.data) < len(data)
    out = _ShortWrites(65536)
    write_all(out, data)
    assert bytes(out.data) == data and pickle.loads(bytes(out.data)) == result
