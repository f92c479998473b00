"""`ppdeploy serve --workers N` (ppdeploy.serve.workers): real supervisor + worker processes on a loopback port,
talked to with tritonclient.http and httpx; the answers compared with the direct ONNX Runtime runner."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.serve.metrics import ServerMetrics
from tests.serve.conftest import CLS_OUT, write_repo

_WORKER_PID = re.compile(r"worker (\d+): pid (\d+)")


def _cls_input(rng: np.random.Generator, rows: int = 1) -> np.ndarray:
    return rng.standard_normal((rows, 3, 48, 192), dtype=np.float32)


def _infer_input(x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _worker_pids(srv: ServerProcess) -> dict[int, int]:
    """worker index -> pid of its latest start (the supervisor logs each start)."""
    out = {}
    for line in srv.lines:
        m = _WORKER_PID.search(line)
        if m:
            out[int(m[1])] = int(m[2])
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _access(srv: ServerProcess, prefix: str, expect: int = 0) -> list[dict]:
    """Access-log entries of requests whose id starts with `prefix`. A worker logs a request after sending its
    response, and the server's stderr is read by a thread: wait (up to 10 s) until `expect` of them are there."""
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in list(srv.lines) if line.startswith('{"ts"')]
        found = [e for e in entries if e["request_id"].startswith(prefix)]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _many_connections(srv: ServerProcess, x: np.ndarray, n: int, prefix: str,
                      headers: dict | None = None) -> list[np.ndarray]:
    """n binary infer requests, each on a connection of its own (so the kernel spreads them over the workers)."""
    def one(k: int) -> np.ndarray:
        c = httpclient.InferenceServerClient(srv.hostport)
        try:
            return c.infer("cls", [_infer_input(x[k:k + 1])],
                           headers={"X-Request-ID": f"{prefix}{k}", **(headers or {})}).as_numpy(CLS_OUT)
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


# ---------------------------------------------------------------------------------------------------------
# Without a server
# ---------------------------------------------------------------------------------------------------------
def test_merged_metrics_are_the_sum_of_the_workers():
    from ppdeploy.serve.batcher import BatchTimings

    workers = []
    for rows in ((1, 2), (3,)):
        m = ServerMetrics()
        mm = m.model("cls")
        for r in rows:
            mm.on_batch(BatchTimings(r, r, 10, 100, 1000), [5] * r)
            for _ in range(r):
                mm.on_request(True, 7)
        mm.on_request(False, 9, "REJECTED")
        mm.set_ready(True)
        m.task_requests.labels("ocr", "200").inc(len(rows))
        workers.append(m)
    workers[1].model("cls").set_ready(False)
    merged = ServerMetrics.merged([w.snapshot() for w in workers])
    stats = merged.model("cls").statistics()
    assert stats["inference_count"] == 6 and stats["execution_count"] == 3
    assert stats["inference_stats"]["success"] == {"count": 6, "ns": 42}
    assert stats["inference_stats"]["fail"] == {"count": 2, "ns": 18}
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {1: 1, 2: 1, 3: 1}
    text = merged.render().decode()
    assert 'nv_inference_request_failure{model="cls",version="1",reason="REJECTED"} 2' in text
    assert 'ppdeploy_batch_size_count{model="cls"} 3.0' in text
    assert 'ppdeploy_task_requests_total{status="200",task="ocr"} 3.0' in text
    assert 'ppdeploy_model_ready{model="cls"} 0.0' in text  # ready only where every worker is


def test_bad_worker_counts_are_refused(capsys):
    from ppdeploy.cli import main

    for argv, words in ((["--workers", "0"], "between 1 and"), (["--workers", "-3"], "between 1 and"),
                        (["--workers", "2", "--ray"], "--workers is for the built-in server")):
        assert main(["serve", "ppocr-cls", *argv]) == 2
        assert words in capsys.readouterr().err
    os.environ["PPDEPLOY_WORKER_SOCKET"] = "fork"
    try:
        from ppdeploy.core.errors import ConfigError
        from ppdeploy.serve.workers import socket_mode

        with pytest.raises(ConfigError, match="reuseport or shared"):
            socket_mode()
    finally:
        del os.environ["PPDEPLOY_WORKER_SOCKET"]


# ---------------------------------------------------------------------------------------------------------
# Mode 1: every worker loads its own engine
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workers_server(tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("workers"), {
        "cls": "source: ppocr-cls\nbackends: [onnxruntime]\nmax_batch_size: 8\nthreads: 1\n"
               "dynamic_batching: {max_queue_delay_ms: 2}\n",
    })
    srv = ServerProcess(["--repo", str(root), "--workers", "2"], access_log=True).start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_two_workers_answer_like_the_direct_runner(workers_server, cls_runner):
    srv = workers_server
    assert "2 workers" in srv.lines[0] and srv.get("/v2/health/ready").status_code == 200
    x = _cls_input(np.random.default_rng(0), 32)
    got = _many_connections(srv, x, len(x), "parity-")
    np.testing.assert_allclose(np.concatenate(got), cls_runner.infer({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)
    served_by = {e["worker"] for e in _access(srv, "parity-", len(x))}
    assert served_by == {0, 1}  # 32 connections hashed over 2 listening sockets: both took some


@pytest.mark.slow
def test_metrics_and_stats_are_server_totals_whichever_worker_answers(workers_server):
    srv = workers_server

    def success() -> float:
        return srv.metric("nv_inference_request_success", model="cls")

    before, before_stats = success(), srv.get("/v2/models/cls/stats").json()["model_stats"][0]
    n = 40
    _many_connections(srv, _cls_input(np.random.default_rng(1), n), n, "totals-")
    assert len(_access(srv, "totals-", n)) == n
    scrapes = [httpx.get(srv.url + "/metrics", headers={"X-Request-ID": f"scrape-{i}"}).text for i in range(12)]
    for text in scrapes:  # every scrape, from either worker, shows the same exact totals
        line = next(ln for ln in text.splitlines() if ln.startswith("nv_inference_request_success{"))
        assert float(line.rsplit(" ", 1)[1]) - before == n
        assert "ppdeploy_workers_answering 2.0" in text
    assert {e["worker"] for e in _access(srv, "scrape-", len(scrapes))} == {0, 1}
    after = srv.get("/v2/models/cls/stats").json()["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] - before_stats["inference_stats"]["success"]["count"] == n
    assert after["inference_count"] - before_stats["inference_count"] == n
    executions = after["execution_count"] - before_stats["execution_count"]
    assert 1 <= executions <= n
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    assert srv.metric("ppdeploy_batch_size_count", model="cls") == after["execution_count"]
    all_stats = srv.get("/v2/models/stats").json()["model_stats"]
    assert [s["name"] for s in all_stats] == ["cls"] and all_stats[0]["inference_count"] == after["inference_count"]


@pytest.mark.slow
def test_a_port_in_use_is_refused_not_shared(workers_server):
    """SO_REUSEPORT must not let a second server join the first one's port and take half its connections."""
    import subprocess
    import sys

    port = workers_server.hostport.rsplit(":", 1)[1]
    for workers in ("2", "1"):
        r = subprocess.run([sys.executable, "-m", "ppdeploy", "serve", "ppocr-cls", "--workers", workers, "--port", port],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr[-500:]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_server_keeps_answering(workers_server, cls_runner):
    srv = workers_server
    pids = _worker_pids(srv)
    assert sorted(pids) == [0, 1] and all(_alive(p) for p in pids.values())
    os.kill(pids[1], signal.SIGKILL)
    x = _cls_input(np.random.default_rng(2), 1)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    srv.wait(lambda: _worker_pids(srv)[1] != pids[1], 30, "restarting worker 1")
    # worker 0 answers throughout; the server is ready again once the new worker 1 loaded
    got = httpclient.InferenceServerClient(srv.hostport).infer("cls", [_infer_input(x)]).as_numpy(CLS_OUT)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    srv.wait(lambda: srv.get("/v2/health/ready").status_code == 200, 90, "ready after the restart")
    assert srv.metric("ppdeploy_worker_restarts_total") == 1
    assert srv.metric("ppdeploy_workers_answering") == 2
    assert any("worker 1" in ln and "exited unexpectedly (killed by SIGKILL)" in ln for ln in srv.lines)
    got = _many_connections(srv, np.repeat(x, 16, axis=0), 16, "after-kill-")
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigterm_drains_every_worker_and_leaves_no_process(workers_server, cls_runner):
    srv = workers_server
    pids = list(_worker_pids(srv).values())
    x = _cls_input(np.random.default_rng(3), 1)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    answered: dict[str, int] = {}
    stop = threading.Event()

    def client(t: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"drain-{t}-{i}"
            i += 1
            try:  # a new connection each time: the requests reach both workers
                r = httpclient.InferenceServerClient(srv.hostport).infer("cls", [_infer_input(x)],
                                                                         headers={"X-Request-ID": rid})
            except Exception:  # refused once the listeners closed
                if srv.proc.poll() is not None:
                    return
                continue
            np.testing.assert_allclose(r.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)
            answered[rid] = 200

    threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    assert srv.stop() == 0
    stop.set()
    for th in threads:
        th.join(30)
    accepted = {e["request_id"]: e["status"] for e in _access(srv, "drain-", len(answered))}
    assert accepted and set(accepted.values()) == {200}
    assert set(accepted) == set(answered)  # everything a worker took was answered and received
    assert {e["worker"] for e in _access(srv, "drain-")} == {0, 1}
    assert not [p for p in pids if _alive(p)]


@pytest.mark.slow
def test_one_shared_listening_socket_serves_too(tmp_path, cls_runner):
    """PPDEPLOY_WORKER_SOCKET=shared: every worker accepts on one inherited socket (which worker takes a connection
    is a race, so only the answers and the totals are checked)."""
    root = write_repo(tmp_path, {"cls": "source: ppocr-cls\nbackends: [onnxruntime]\nmax_batch_size: 8\nthreads: 1\n"})
    with ServerProcess(["--repo", str(root), "--workers", "2"], env={"PPDEPLOY_WORKER_SOCKET": "shared"},
                       access_log=True) as srv:
        assert "shared sockets" in srv.lines[0]
        x = _cls_input(np.random.default_rng(6), 24)
        got = _many_connections(srv, x, len(x), "shared-")
        np.testing.assert_allclose(np.concatenate(got), cls_runner.infer({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)
        assert srv.metric("nv_inference_request_success", model="cls") == len(x)
        assert len(_access(srv, "shared-", len(x))) == len(x)
        assert srv.stop() == 0


# ---------------------------------------------------------------------------------------------------------
# Mode 2: the workers share one engine process per model instance, which merges their batches
# ---------------------------------------------------------------------------------------------------------
_ENGINE_PID = re.compile(r"shared engine of cls: pid (\d+)|engine process of cls \(pid \d+\) exited.*|"
                         r"shared engine of cls died; restarted \(pid (\d+)\)")


@pytest.fixture(scope="module")
def shared_engine_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    (root / "broken").mkdir()
    (root / "broken" / "model.onnx").write_bytes(b"this is not an ONNX model")
    write_repo(root, {
        "cls": "source: ppocr-cls\nbackends: [onnxruntime]\nmax_batch_size: 16\nthreads: 1\nengine_process: true\n"
               "dynamic_batching: {max_queue_delay_ms: 1}\n",
        "broken": "source: model.onnx\nbackends: [onnxruntime]\nengine_process: true\n",
    })
    srv = ServerProcess(["--repo", str(root), "--workers", "2", "--no-strict-readiness"],
                        env={"PPDEPLOY_API_KEY": KEY}, access_log=True).start()
    yield srv
    srv.stop()


KEY = "w0rkers"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _engine_pid(srv: ServerProcess) -> int:
    pids = [int(m[1] or m[2]) for line in srv.lines if (m := _ENGINE_PID.search(line)) and (m[1] or m[2])]
    return pids[-1]


@pytest.mark.slow
def test_shared_engine_merges_the_workers_batches_and_answers_right(shared_engine_server, cls_runner):
    srv = shared_engine_server
    x = _cls_input(np.random.default_rng(4), 96)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    local = threading.local()

    def one(k: int) -> np.ndarray:
        if not hasattr(local, "c"):
            local.c = httpclient.InferenceServerClient(srv.hostport)
        return local.c.infer("cls", [_infer_input(x[k:k + 1])], headers={"X-Request-ID": f"merge-{k}", **AUTH}).as_numpy(
            CLS_OUT)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(x))))
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-6)
    assert {e["worker"] for e in _access(srv, "merge-", len(x))} == {0, 1}
    worker_batches = srv.metric("nv_inference_exec_count", AUTH, model="cls")
    engine_calls = srv.metric("ppdeploy_engine_executions_total", AUTH, model="cls")
    assert srv.metric("ppdeploy_engine_merged_calls_total", AUTH, model="cls") > 0  # merged_rows > own rows seen
    assert engine_calls < worker_batches  # the engine ran fewer, larger calls than the workers sent
    assert engine_calls == pytest.approx(round(engine_calls), abs=1e-6)  # every share of every call counted
    assert srv.metric("ppdeploy_engine_batch_size_count", AUTH, model="cls") == pytest.approx(engine_calls, abs=1e-6)
    assert srv.metric("ppdeploy_engine_batch_size_sum", AUTH, model="cls") == pytest.approx(
        srv.metric("nv_inference_count", AUTH, model="cls"), abs=1e-6)
    # the supervisor started the engine process without loading any engine library itself (its children are fresh
    # interpreters, never forks of a process holding ONNX Runtime / paddle / CUDA state)
    with open(f"/proc/{srv.proc.pid}/maps") as f:
        maps = f.read()
    assert not [ln for ln in maps.splitlines() if any(k in ln for k in ("onnxruntime", "paddle", "libcuda"))]
    # a model whose shared engine could not start is unavailable, with the reason, in every worker
    for _ in range(6):
        index = {m["name"]: m for m in httpx.post(srv.url + "/v2/repository/index", headers=AUTH).json()}
        assert index["cls"]["state"] == "READY" and index["broken"]["state"] == "UNAVAILABLE"
        assert "onnx" in index["broken"]["reason"].lower()
    # the API key holds in every worker
    for i in range(12):
        r = httpx.get(srv.url + "/v2/models/cls", headers={"X-Request-ID": f"nokey-{i}"})
        assert r.status_code == 401 and "API key" in r.json()["error"]
    assert {e["worker"] for e in _access(srv, "nokey-", 12)} == {0, 1}


@pytest.mark.slow
def test_shared_engine_killed_is_restarted_then_sigterm_stops_everything(shared_engine_server, cls_runner):
    srv = shared_engine_server
    engine = _engine_pid(srv)
    workers = list(_worker_pids(srv).values())
    os.kill(engine, signal.SIGKILL)
    srv.wait(lambda: srv.metric("ppdeploy_engine_process_restarts_total", AUTH, model="cls") == 1, 60,
             "engine restarted")
    assert _engine_pid(srv) != engine
    x = _cls_input(np.random.default_rng(5), 2)
    got = _many_connections(srv, x, 2, "after-engine-kill-", AUTH)
    np.testing.assert_allclose(np.concatenate(got), cls_runner.infer({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)
    assert srv.stop(signal.SIGINT) == 0  # Ctrl+C: the same drain as SIGTERM
    assert not [p for p in [*workers, _engine_pid(srv)] if _alive(p)]


@pytest.mark.slow
def test_workers_and_shared_engine_exit_when_the_supervisor_is_killed(tmp_path):
    root = write_repo(tmp_path, {"cls": "source: ppocr-cls\nbackends: [onnxruntime]\nthreads: 1\nengine_process: true\n"})
    srv = ServerProcess(["--repo", str(root), "--workers", "2"]).start()
    try:
        children = [*_worker_pids(srv).values(), _engine_pid(srv)]
        assert len(children) == 3 and all(_alive(p) for p in children)
        srv.proc.kill()
        srv.proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _alive(p)]  # workers: PR_SET_PDEATHSIG; the engine: EOF from its owner
    finally:
        srv.stop()
