"""ppdeploy.serve.engine_process.SharedEngine / connect_engine: one engine process, several callers, merged calls.

Real ONNX Runtime on the CPU; the reference is the in-process runner of the same cached engine (conftest). To make
calls arrive together (so the engine can merge them) without relying on timing, the engine process is stopped
(SIGSTOP) while the callers send, and continued once every request has been written: its I/O thread then reads
them all in one round."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.core.errors import InputError
from ppdeploy.serve.engine_process import (
    EngineProcessDied,
    EngineProcessUnreachable,
    SharedEngine,
    connect_engine,
)
from ppdeploy.serve.engine_process.supervisor import run_dir_base
from tests.serve.conftest import CLS_OUT, REC_OUT
from tests.serve.test_engine_process import alive, arena_mappings, wait_for


def assert_rows_equal(got: np.ndarray, want: np.ndarray) -> None:
    """A caller's rows of a merged call against the reference run on its rows alone: ONNX Runtime's CPU kernels
    may round a row differently in a larger batch (rec's softmax: up to 1.1e-6 measured for a batch of 4 vs 1)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def cls_input(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 48, 192), dtype=np.float32)


@pytest.fixture(scope="module")
def shared_cls():
    engine = SharedEngine.start("ppocr-cls", backend="onnxruntime", label="cls", max_batch_size=8)
    yield engine
    engine.close()


def connect(engine: SharedEngine, n: int, **kwargs):
    return [connect_engine(engine.address, label="cls", **kwargs).runner for _ in range(n)]


def stop(pid: int) -> None:
    """SIGSTOP `pid` and wait until every thread of it has stopped (a thread woken from epoll_wait by the signal
    could otherwise still return with the first request alone)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        return all(s in "tT" for s in states)

    assert wait_for(stopped), f"process {pid} did not stop"


def call_together(engine: SharedEngine, calls: list) -> list[dict]:
    """Run `calls` [(runner, feeds)] so that every request is in the engine process's socket before it reads any:
    [{"out": outputs, "timings": last_timings} or {"exc": exception}] in the order of `calls`."""
    results: list[dict] = [{} for _ in calls]

    def call(i: int, runner, feeds) -> None:
        try:
            results[i]["out"] = runner.infer(feeds)
            results[i]["timings"] = dict(runner.last_timings)
        except Exception as exc:
            results[i]["exc"] = exc

    threads = [threading.Thread(target=call, args=(i, r, f)) for i, (r, f) in enumerate(calls)]
    stop(engine.pid)
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: all(r._sent for r, _ in calls)), "a request never reached the engine's socket"
    finally:
        os.kill(engine.pid, signal.SIGCONT)
    for t in threads:
        t.join(60)
    return results


def test_concurrent_callers_get_their_own_outputs_from_one_merged_call(shared_cls, cls_runner):
    runners = connect(shared_cls, 3)
    xs = [cls_input(rows, seed) for rows, seed in ((1, 1), (2, 2), (3, 3))]
    results = call_together(shared_cls, list(zip(runners, xs)))
    for x, res in zip(xs, results):
        assert "exc" not in res, res.get("exc")
        assert_rows_equal(res["out"][CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        assert (res["timings"]["merged_rows"], res["timings"]["merged_requests"]) == (6, 3), res["timings"]
        assert {"engine", "ipc", "engine_wait"} <= set(res["timings"])
    # Free-running callers on threads: whatever merges happen, every caller gets its own rows.
    failures: list = []

    def hammer(runner, seed: int) -> None:
        for i in range(15):
            x = cls_input(1 + (seed + i) % 3, seed * 100 + i)
            try:
                assert_rows_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(r, s)) for s, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    for r in runners:
        r.close()


def test_validation_stays_in_the_caller(shared_cls):
    runner = connect(shared_cls, 1)[0]
    with pytest.raises(InputError, match="float64"):
        runner.infer(np.zeros((1, 3, 48, 192)))
    assert runner.io == shared_cls.io and runner.backend == "onnxruntime" and runner.pid == shared_cls.pid
    runner.close()


def test_calls_of_different_shapes_or_too_many_rows_run_apart(rec_runner):
    engine = SharedEngine.start("ppocrv4-rec", backend="onnxruntime", label="rec", max_batch_size=4)
    try:
        runners = [connect_engine(engine.address, label="rec").runner for _ in range(4)]
        rng = np.random.default_rng(7)
        xs = [rng.standard_normal(shape, dtype=np.float32)
              for shape in ((1, 3, 48, 320), (2, 3, 48, 160), (1, 3, 48, 320), (3, 3, 48, 320))]
        results = call_together(engine, list(zip(runners, xs)))
        for x, res in zip(xs, results):
            assert "exc" not in res, res.get("exc")
            assert_rows_equal(res["out"][REC_OUT], rec_runner.infer(x)[REC_OUT])
        narrow = results[1]["timings"]
        assert narrow["merged_rows"] == 2 and narrow["merged_requests"] == 1  # nothing else is 160 wide
        # Width 320: 1 + 1 + 3 rows, at most 4 per engine call: whatever the order, one pair merges, one runs alone.
        wide = [results[i]["timings"] for i in (0, 2, 3)]
        assert sorted(t["merged_requests"] for t in wide) == [1, 2, 2]
        assert all(t["merged_rows"] <= 4 for t in wide)
        for r in runners:
            r.close()
    finally:
        engine.close()


def test_an_engine_without_merging_runs_every_call_alone(cls_runner):
    engine = SharedEngine.start("ppocr-cls", backend="onnxruntime", label="cls", max_batch_size=1)
    try:
        runners = connect(engine, 2)
        xs = [cls_input(1, 11), cls_input(1, 12)]
        for x, res in zip(xs, call_together(engine, list(zip(runners, xs)))):
            assert res["timings"]["merged_requests"] == 1 and res["timings"]["merged_rows"] == 1
            assert np.array_equal(res["out"][CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        for r in runners:
            r.close()
    finally:
        engine.close()


def gather_model(path):
    """ids int64[N, 4] -> table[ids] float32[N, 4, 3]: ONNX Runtime rejects an id outside the table at run time,
    a value no input validation looks at."""
    from onnx import TensorProto, helper, save

    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)], "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 4, 3])],
        [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel().tolist())])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return table


def test_a_failing_call_does_not_fail_the_calls_merged_with_it(tmp_path):
    table = gather_model(tmp_path / "gather.onnx")
    engine = SharedEngine.start(str(tmp_path / "gather.onnx"), backend="onnxruntime", label="gather",
                                max_batch_size=8, cache_dir=str(tmp_path / "cache"))
    try:
        runners = [connect_engine(engine.address, label="gather").runner for _ in range(3)]
        good1 = np.array([[0, 1, 2, 3]], np.int64)
        bad = np.array([[0, 1, 2, 12]], np.int64)
        good2 = np.array([[9, 8, 7, 6], [5, 4, 3, 2]], np.int64)
        results = call_together(engine, list(zip(runners, (good1, bad, good2))))
        assert isinstance(results[1].get("exc"), RuntimeError), results[1]
        assert "12" in str(results[1]["exc"])  # ORT names the id out of range
        for ids, res in ((good1, results[0]), (good2, results[2])):
            assert "exc" not in res, res.get("exc")
            assert np.array_equal(res["out"]["rows"], table[ids])
        # together again without the bad one: merged (the engine still merges after a failure)
        results = call_together(engine, [(runners[0], good1), (runners[2], good2)])
        assert [r["timings"]["merged_rows"] for r in results] == [3, 3]
        assert np.array_equal(runners[1].infer(good1)["rows"], table[good1])
        for r in runners:
            r.close()
    finally:
        engine.close()


_CALLER = """
import sys, threading, time
import numpy as np
from ppdeploy.serve.engine_process import connect_engine
address, rows, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runner = connect_engine(address, label="cls").runner
x = np.random.default_rng(seed).standard_normal((rows, 3, 48, 192), dtype=np.float32)
print("connected", flush=True)
sys.stdin.readline()
box = {}
thread = threading.Thread(target=lambda: box.update(out=runner.infer(x)))
thread.start()
while not runner._sent and thread.is_alive():
    time.sleep(0.01)
print("sent", flush=True)
thread.join()
np.save(out, box["out"]["softmax_0.tmp_0"])
print(runner.last_timings["merged_rows"], flush=True)
runner.close()
"""


@pytest.mark.slow
def test_callers_in_separate_processes_are_merged(shared_cls, cls_runner, tmp_path):
    specs = [(1, 21), (2, 22), (1, 23)]
    procs = [subprocess.Popen([sys.executable, "-c", _CALLER, shared_cls.address, str(rows), str(seed),
                               str(tmp_path / f"{i}.npy")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i, (rows, seed) in enumerate(specs)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "connected"
        stop(shared_cls.pid)
        try:
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "sent"
        finally:
            os.kill(shared_cls.pid, signal.SIGCONT)
        merged = [int(p.stdout.readline()) for p in procs]
        for p in procs:
            assert p.wait(60) == 0
    finally:
        for p in procs:
            p.kill()
    assert merged == [4, 4, 4]
    for i, (rows, seed) in enumerate(specs):
        assert_rows_equal(np.load(tmp_path / f"{i}.npy"), cls_runner.infer(cls_input(rows, seed))[CLS_OUT])


@pytest.mark.slow
def test_a_caller_that_dies_with_a_queued_call_does_not_disturb_the_others(shared_cls, cls_runner, tmp_path):
    doomed = subprocess.Popen([sys.executable, "-c", _CALLER, shared_cls.address, "2", "51", str(tmp_path / "x.npy")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runner = connect(shared_cls, 1)[0]
    x = cls_input(1, 52)
    box: dict = {}
    try:
        assert doomed.stdout.readline().strip() == "connected"
        stop(shared_cls.pid)
        try:
            doomed.stdin.write("go\n")
            doomed.stdin.flush()
            assert doomed.stdout.readline().strip() == "sent"
            thread = threading.Thread(target=lambda: box.update(out=_try(runner.infer, x)))
            thread.start()
            assert wait_for(lambda: runner._sent)
            doomed.kill()  # its call is queued in the engine's socket, its arenas mapped there
            doomed.wait()
        finally:
            os.kill(shared_cls.pid, signal.SIGCONT)
        thread.join(60)
    finally:
        doomed.kill()
    assert not isinstance(box["out"], Exception), box["out"]
    assert_rows_equal(box["out"][CLS_OUT], cls_runner.infer(x)[CLS_OUT])
    # The dead caller's call ran merged with this one (its reply discarded), or was dropped from the queue when its
    # connection's end was read before the engine took it.
    assert runner.last_timings["merged_rows"] in (1, 3)
    assert np.array_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])  # and the engine serves on
    assert alive(shared_cls.pid)
    runner.close()


def test_a_shared_engine_that_cannot_load_raises_the_load_error_and_frees_its_address(tmp_path):
    from ppdeploy.core.errors import PPDeployError
    from ppdeploy.deploy.load import load_model

    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(PPDeployError) as in_process:
        load_model(missing, backend="onnxruntime")
    base = run_dir_base()
    before = {p for p in os.listdir(base) if p.startswith("ppdeploy-")}
    with pytest.raises(PPDeployError) as err:
        SharedEngine.start(missing, backend="onnxruntime", label="missing", max_batch_size=4)
    assert type(err.value) is type(in_process.value) and str(err.value) == str(in_process.value)
    # its socket and private run directory are gone with it
    assert {p for p in os.listdir(base) if p.startswith("ppdeploy-")} <= before


@pytest.mark.slow
def test_a_killed_engine_fails_the_call_in_flight_and_restarts_at_the_same_address(cls_runner):
    engine = SharedEngine.start("ppocr-cls", backend="onnxruntime", label="cls", max_batch_size=8)
    try:
        address, first = engine.address, engine.pid
        runner = connect_engine(address, label="cls").runner
        x = cls_input(2, 31)
        assert engine.ensure_running() is False  # alive: nothing to do
        stop(first)
        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(out=_try(runner.infer, x)))
        thread.start()
        assert wait_for(lambda: runner._sent)
        os.kill(first, signal.SIGKILL)
        thread.join(30)
        exc = box["out"]
        assert isinstance(exc, EngineProcessDied) and getattr(exc, "status", None) == 503
        assert "exited during this call" in str(exc)
        assert wait_for(lambda: not alive(first))
        assert engine.ensure_running() is True
        assert engine.address == address and engine.pid != first and engine.restarts == 1
        assert engine.backend == "onnxruntime"
        # the caller's next call reconnects to the new engine process
        assert np.array_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        assert runner.restarts == 1 and runner.pid == engine.pid

        # Killed between calls, restarted only while the caller waits: the next call waits for the restart.
        second = engine.pid
        os.kill(second, signal.SIGKILL)
        assert wait_for(lambda: gone(second))
        box.clear()
        thread = threading.Thread(target=lambda: box.update(out=_try(runner.infer, x)))
        thread.start()
        time.sleep(0.3)  # the caller is reconnecting: its hello waits in the listening socket's backlog
        assert engine.ensure_running() is True
        thread.join(60)
        assert not isinstance(box["out"], Exception), box["out"]
        assert np.array_equal(box["out"][CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        assert engine.restarts == 2 and runner.restarts == 2
        runner.close()
    finally:
        engine.close()


def gone(pid: int) -> bool:
    """Every thread of `pid` has exited (so its sockets are closed): a killed process's main thread shows as a
    zombie while its other threads may still be exiting with the descriptors they share."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    return len(tasks) <= 1 and not alive(pid)


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_close_leaves_no_process_and_no_shared_memory(cls_runner):
    gc.collect()  # outputs of earlier tests still lease their arenas until collected
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    maps_before = arena_mappings()
    engine = SharedEngine.start("ppocr-cls", backend="onnxruntime", label="cls", max_batch_size=8)
    pid = engine.pid
    runner = connect_engine(engine.address, label="cls", timeout_s=0.5).runner
    out = runner.infer(cls_input(1, 41))
    assert arena_mappings() > maps_before
    engine.close()
    engine.close()  # twice is fine
    assert not alive(pid) and engine.pid is None
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) == shm_before  # arenas are memfds: nothing named, nothing to leak
    with pytest.raises(EngineProcessDied):  # the address is gone too: the reconnect gives up after its timeout
        runner.infer(cls_input(1, 41))
    runner.close()
    del out
    gc.collect()
    assert arena_mappings() == maps_before


def test_connecting_to_a_missing_address_fails_clearly_after_the_timeout():
    start = time.monotonic()
    address = "/nonexistent/ppdeploy-engine-nobody-listens-here.sock"
    with pytest.raises(EngineProcessUnreachable) as err:
        connect_engine(address, label="cls", timeout_s=0.3)
    assert time.monotonic() - start >= 0.3
    assert address in str(err.value) and "0.3 s" in str(err.value)
    assert "'cls'" in str(err.value) and err.value.status == 503


@pytest.mark.slow
def test_the_engine_process_exits_when_its_supervisor_is_killed(cls_runner):
    """Its callers then see the engine gone (a 503, not a hang)."""
    script = ("from ppdeploy.serve.engine_process import SharedEngine\n"
              "import time\n"
              "engine = SharedEngine.start('ppocr-cls', backend='onnxruntime', label='cls', max_batch_size=4)\n"
              "print(engine.pid, engine.address, flush=True)\n"
              "time.sleep(600)\n")
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, address = supervisor.stdout.readline().split()
        runner = connect_engine(address, label="cls", timeout_s=0.5).runner
        x = cls_input(1, 61)
        assert_rows_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        supervisor.kill()
        supervisor.wait()
        assert wait_for(lambda: gone(int(pid))), "the engine process outlived its killed supervisor"
        with pytest.raises(EngineProcessDied):
            runner.infer(x)
        runner.close()
    finally:
        supervisor.kill()
