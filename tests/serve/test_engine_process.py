"""ppdeploy.serve.engine_process: the engine of a model instance in a child process, fed through shared memory.

Real ONNX Runtime on the CPU; the reference is the in-process runner of the same cached engine (conftest)."""
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

from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.serve.engine_process import EngineProcessDied, load_model_in_process
from ppdeploy.serve.engine_process.errors import encode_error, rebuild_error
from tests.serve.conftest import CLS_OUT, REC_OUT, write_repo


@pytest.fixture(scope="session")
def ep_cls():
    dep = load_model_in_process("ppocr-cls", backend="onnxruntime", label="cls")
    yield dep.runner
    dep.close()


@pytest.fixture(scope="session")
def ep_rec():
    dep = load_model_in_process("ppocrv4-rec", backend="onnxruntime", label="rec")
    yield dep.runner
    dep.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and alive(int(entry.name)):
                out.append(int(entry.name))
    return out


def arena_mappings() -> int:
    return sum("memfd:ppdeploy-arena" in line for line in Path("/proc/self/maps").read_text().splitlines())


def wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_outputs_equal_the_in_process_runner(ep_cls, ep_rec, cls_runner, rec_runner):
    rng = np.random.default_rng(3)
    assert ep_cls.io == cls_runner.io and ep_cls.backend == "onnxruntime"
    for batch in (1, 5, 2):
        x = rng.standard_normal((batch, 3, 48, 192), dtype=np.float32)
        got, want = ep_cls.infer(x), cls_runner.infer(x)
        assert set(got) == set(want) and np.array_equal(got[CLS_OUT], want[CLS_OUT])
    # rec at width 320, batch 2: 2 x 1 MB of softmax out (the child sends a bigger output arena with its reply),
    # then a narrower line in the same arena.
    for shape in ((2, 3, 48, 320), (1, 3, 48, 96)):
        x = rng.standard_normal(shape, dtype=np.float32)
        got, want = ep_rec.infer(x), rec_runner.infer(x)
        assert got[REC_OUT].shape == want[REC_OUT].shape and got[REC_OUT].dtype == want[REC_OUT].dtype
        assert np.array_equal(got[REC_OUT], want[REC_OUT])
    assert {"engine", "ipc", "infer"} <= set(ep_rec.last_timings)
    assert ep_rec.last_timings["merged_rows"] == 1 and ep_rec.last_timings["merged_requests"] == 1  # one caller


def test_outputs_held_by_the_caller_are_never_overwritten(ep_rec, rec_runner):
    """Outputs are views of a shared arena: one still referenced must survive later calls (they use another)."""
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 3, 48, 320), dtype=np.float32) for _ in range(3)]
    held = [ep_rec.infer(x)[REC_OUT] for x in xs]
    part = held[0][:, :5]  # a view of a view keeps the arena leased too
    del held[0]
    gc.collect()
    for x in xs:
        ep_rec.infer(x)
    assert np.array_equal(part, rec_runner.infer(xs[0])[REC_OUT][:, :5])
    for x, out in zip(xs[1:], held):
        assert np.array_equal(out, rec_runner.infer(x)[REC_OUT])


def test_errors_come_back_as_the_same_class_and_message(ep_cls, cls_runner):
    bad = {"x": np.zeros((1, 3, 48, 192), np.float64)}
    with pytest.raises(InputError) as in_process:
        cls_runner.infer(bad)
    # _infer skips the parent's own validation: the child's runner raises it and it crosses the process boundary.
    with pytest.raises(InputError) as crossed:
        ep_cls._infer(bad)
    assert type(crossed.value) is type(in_process.value) and str(crossed.value) == str(in_process.value)
    assert any("raised in the engine process" in n for n in getattr(crossed.value, "__notes__", []))
    # the engine still serves after an error
    x = np.ones((1, 3, 48, 192), np.float32)
    assert np.array_equal(ep_cls.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])


def test_an_error_class_that_does_not_pickle_is_rebuilt_by_name():
    from ppdeploy.serve.batcher import (
        QueueFull,  # __init__(message, retry_after_s): pickle cannot rebuild it
    )

    rebuilt = rebuild_error(encode_error(QueueFull("queue is full", 3)))
    assert type(rebuilt) is QueueFull and str(rebuilt) == "queue is full"
    other = rebuild_error(encode_error(KeyError("k")))
    assert type(other) is KeyError
    foreign = type("Fail", (Exception,), {"__module__": "onnxruntime.capi"})("bad node")
    assert str(rebuild_error(encode_error(foreign))) == "onnxruntime.capi.Fail: bad node"


@pytest.mark.slow
def test_a_killed_engine_process_fails_the_call_in_flight_and_restarts_for_the_next(cls_runner):
    restarts = []
    dep = load_model_in_process("ppocr-cls", backend="onnxruntime", label="cls",
                                on_restart=lambda: restarts.append(1))
    runner = dep.runner
    x = np.random.default_rng(5).standard_normal((2, 3, 48, 192), dtype=np.float32)
    try:
        first = runner.pid
        # Stop the child, so the call is certainly in flight (its request sent, no reply) when it is killed.
        os.kill(first, signal.SIGSTOP)
        box: dict = {}

        def call():
            try:
                box["out"] = runner.infer(x)
            except Exception as exc:
                box["exc"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        assert wait_for(lambda: runner._sent)
        os.kill(first, signal.SIGKILL)
        thread.join(30)
        assert isinstance(box.get("exc"), EngineProcessDied) and "SIGKILL" in str(box["exc"])
        assert getattr(box["exc"], "status", None) == 503
        assert not alive(first)
        # the next call runs on a fresh process
        assert np.array_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        assert runner.restarts == 1 and restarts == [1] and runner.pid != first
        # killed between calls: the next call either runs on a restarted process (the death was seen before the
        # request went out) or fails as in flight (it was not); the one after runs in any case
        second = runner.pid
        os.kill(second, signal.SIGKILL)
        assert wait_for(lambda: not alive(second))
        try:
            runner.infer(x)
        except EngineProcessDied:
            pass
        assert np.array_equal(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT])
        assert runner.restarts == 2
    finally:
        dep.close()


def test_close_leaves_no_process_and_no_shared_memory(cls_runner):
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    maps_before = arena_mappings()
    dep = load_model_in_process("ppocr-cls", backend="onnxruntime", label="cls")
    pid = dep.runner.pid
    out = dep.runner.infer(np.zeros((1, 3, 48, 192), np.float32))
    assert arena_mappings() > maps_before and pid in children(os.getpid())
    dep.close()
    dep.close()  # twice is fine
    assert not alive(pid)
    assert arena_mappings() > maps_before  # `out` still views its arena: unmapped only when it goes
    del out
    gc.collect()
    assert arena_mappings() == maps_before
    if shm_before or os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) == shm_before  # arenas are memfds: nothing named, nothing to leak
    with pytest.raises(PPDeployError, match="closed"):
        dep.runner.infer(np.zeros((1, 3, 48, 192), np.float32))


def test_load_errors_come_back_from_the_child(tmp_path):
    from ppdeploy.core.errors import SourceError

    with pytest.raises(PPDeployError) as err:
        load_model_in_process(str(tmp_path / "missing.onnx"), backend="onnxruntime")
    with pytest.raises(PPDeployError) as in_process:
        from ppdeploy.deploy.load import load_model

        load_model(str(tmp_path / "missing.onnx"), backend="onnxruntime")
    assert type(err.value) is type(in_process.value) and str(err.value) == str(in_process.value)
    assert isinstance(err.value, SourceError) or err.value.__class__.__module__.startswith("ppdeploy")


@pytest.mark.slow
def test_the_engine_process_exits_when_its_parent_is_killed():
    script = ("from ppdeploy.serve.engine_process import load_model_in_process\n"
              "import sys, time\n"
              "dep = load_model_in_process('ppocr-cls', backend='onnxruntime')\n"
              "print(dep.runner.pid, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not alive(child)), "the engine process outlived its killed parent"
    finally:
        parent.kill()


@pytest.mark.slow
def test_a_server_with_engine_processes_answers_tritonclient_and_survives_a_killed_engine(tmp_path, cls_runner):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from ppdeploy.bench.server_process import ServerProcess

    root = write_repo(tmp_path / "repo", {
        "cls": "source: ppocr-cls\nbackends: [onnxruntime]\nmax_batch_size: 8\nengine_process: true\n"
               "dynamic_batching: {max_queue_delay_ms: 1}\n",
    })
    rng = np.random.default_rng(6)
    with ServerProcess(["--repo", str(root)]) as srv:
        engines = children(srv.proc.pid)
        assert len(engines) == 1, engines
        client = httpclient.InferenceServerClient(srv.hostport)

        def infer(x: np.ndarray) -> np.ndarray:
            inp = httpclient.InferInput("x", list(x.shape), "FP64" if x.dtype == np.float64 else "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            return client.infer("cls", [inp]).as_numpy(CLS_OUT)

        x = rng.standard_normal((3, 3, 48, 192), dtype=np.float32)
        assert np.array_equal(infer(x), cls_runner.infer(x)[CLS_OUT])
        with pytest.raises(InferenceServerException) as err:  # the parent validates: still a 400
            infer(rng.standard_normal((1, 3, 48, 192)))
        assert err.value.status() == "400" and "FP64" in err.value.message()

        os.kill(engines[0], signal.SIGKILL)
        assert wait_for(lambda: not alive(engines[0]))
        try:  # a request racing the death is answered 503 (retry), never hangs; the next runs on a new engine
            infer(x)
        except InferenceServerException as exc:
            assert exc.status() == "503" and "exited during this call" in exc.message()
        assert np.array_equal(infer(x), cls_runner.infer(x)[CLS_OUT])
        assert srv.metric("ppdeploy_engine_process_restarts_total", model="cls") == 1
        restarted = children(srv.proc.pid)
        assert len(restarted) == 1 and restarted != engines
    assert srv.exit_code == 0
    assert wait_for(lambda: not alive(restarted[0]))


def test_the_cli_flag_turns_it_on_for_every_model_with_an_engine(tmp_path):
    import argparse

    from ppdeploy.cli import serve as serve_cli
    from ppdeploy.repository.config import load_config

    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    assert serve_cli.configs_from_args(parser.parse_args(["serve", "ppocr-cls"]))[0].engine_process is False
    configs = serve_cli.configs_from_args(parser.parse_args(["serve", "ocr", "--engine-process"]))
    assert {c.name: c.engine_process for c in configs} == {"ppocrv4-det": True, "ppocr-cls": True,
                                                           "ppocrv4-rec": True, "ocr": False}
    root = write_repo(tmp_path / "repo", {"cls": "source: ppocr-cls\nengine_process: true\n"})
    assert load_config(root / "cls" / "config.yaml").engine_process is True
