"""The gRPC service (Triton's GRPCInferenceService) beside the HTTP app, both on one real server on loopback, talked
to with tritonclient.grpc and tritonclient.http unchanged. The gRPC server is started and drained from the app's
lifespan, the way `ppdeploy serve --grpc-port` wires it."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app
from ppdeploy.serve.grpc import start_grpc_server, stop
from ppdeploy.serve.http import ServerSettings
from ppdeploy.serve.runtime import bind_socket
from ppdeploy.serve.shm import SharedMemoryRegistry
from tests.serve.conftest import CLS_OUT

pytestmark = pytest.mark.slow

API_KEY = "s3cret"
MAX_BODY = 2 << 20


class Servers:
    """HTTP (uvicorn, uvloop) and gRPC on one event loop in a thread, over one app and ModelHost."""

    def __init__(self, configs: list[ModelConfig], **settings):
        self.settings = ServerSettings(host="127.0.0.1", port=0, max_body_bytes=MAX_BODY, drain_timeout_s=30,
                                       **settings)
        self.app = build_app(configs, self.settings)
        self.shm = SharedMemoryRegistry()
        self.grpc = None
        inner = self.app.router.lifespan_context
        app = self.app

        @contextlib.asynccontextmanager
        async def lifespan(a):  # what the lead adds to the app's lifespan
            async with inner(a):
                self.grpc = await start_grpc_server(app.state.host, app.state.metrics, self.settings, 0,
                                                    shm=self.shm, handlers=app.state.handlers)
                try:
                    yield
                finally:
                    app.state.handlers.draining = True
                    await stop(self.grpc, self.settings.drain_timeout_s)

        self.app.router.lifespan_context = lifespan
        sock = bind_socket("127.0.0.1", 0)
        self.http_port = sock.getsockname()[1]
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, loop="uvloop", lifespan="on", log_level="warning",
                                                     timeout_graceful_shutdown=30))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, args=(sock,), daemon=True)

    def _run(self, sock) -> None:
        import uvloop

        async def main():
            self.loop = asyncio.get_running_loop()
            await self.uvicorn.serve(sockets=[sock])

        uvloop.run(main())

    def start(self) -> "Servers":
        self.thread.start()
        deadline = time.monotonic() + 300
        while self.grpc is None or not self.app.state.host.loaded:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc.ppdeploy_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def call(self, fn):
        """Run `fn()` on the server's loop (where the models and batchers live); returns its result."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def shutdown(self) -> None:
        """What SIGTERM does: readiness false, then uvicorn's graceful exit runs the lifespan's drain."""
        def begin():
            self.app.state.handlers.draining = True
            self.uvicorn.should_exit = True
        self.loop.call_soon_threadsafe(begin)

    def stop(self) -> None:
        self.shutdown()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.shm.close()


def cls_config(name: str = "cls", max_batch_size: int = 8, **batching) -> ModelConfig:
    return ModelConfig.for_source("ppocr-cls", name=name, backends=["onnxruntime"], max_batch_size=max_batch_size,
                                  dynamic_batching={"inline_max_ms": 0, **batching})


@pytest.fixture(scope="module")
def servers(cls_runner):
    srv = Servers([cls_config(), cls_config("tight", 1, max_queue_size=1)]).start()
    yield srv
    srv.stop()


@pytest.fixture()
def gclient(servers):
    c = grpcclient.InferenceServerClient(servers.grpc_url)
    yield c
    c.close()


def raw_stub(servers: Servers):
    """The generated stub on a plain channel: for requests tritonclient never builds (typed contents, bad data)."""
    import grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(servers.grpc_url))


def line(seed: int = 0, rows: int = 1, width: int = 192) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 48, width), dtype=np.float32)


def grpc_input(arr: np.ndarray, name: str = "x", datatype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def code_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def hold_inference(servers: Servers, model: str = "cls") -> threading.Event:
    """Block the model's only inference thread: requests sent now wait in the queue until the event is set."""
    gate = threading.Event()
    servers.call(lambda: servers.app.state.host.models[model].batcher._executor.submit(gate.wait))
    return gate


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_health_metadata_config_and_index(servers, gclient):
    assert gclient.is_server_live() and gclient.is_server_ready() and gclient.is_model_ready("cls")
    meta = gclient.get_server_metadata(as_json=True)
    assert meta["name"] == "ppdeploy" and "system_shared_memory" in meta["extensions"]
    h = httpclient.InferenceServerClient(servers.http_url)
    meta = gclient.get_model_metadata("cls", as_json=True)
    for t in meta["inputs"] + meta["outputs"]:
        t["shape"] = [int(d) for d in t["shape"]]  # int64 fields are JSON strings in protobuf's JSON
    assert meta == h.get_model_metadata("cls")
    config = gclient.get_model_config("cls", as_json=True)["config"]
    http_config = h.get_model_config("cls")
    assert config["name"] == "cls" and config["max_batch_size"] == http_config["max_batch_size"] == 8
    assert config["platform"] == http_config["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == \
        [(t["name"], t["data_type"], t["dims"]) for t in http_config["input"]]
    index = gclient.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": n, "version": "1", "state": "READY"} for n in ("cls", "tight")]
    assert code_of(lambda: gclient.get_model_metadata("nope"))[0] == "StatusCode.NOT_FOUND"


def test_infer_parity_with_http_raw_typed_and_bytes(servers, gclient, cls_runner):
    x = line(1, rows=2)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    h = httpclient.InferenceServerClient(servers.http_url)
    hin = httpclient.InferInput("x", list(x.shape), "FP32")
    hin.set_data_from_numpy(x)
    http_out = h.infer("cls", [hin]).as_numpy(CLS_OUT)
    got = gclient.infer("cls", [grpc_input(x)], request_id="r1")
    assert got.get_response().id == "r1" and got.get_response().model_version == "1"
    np.testing.assert_array_equal(got.as_numpy(CLS_OUT), http_out)
    np.testing.assert_allclose(got.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)

    # classification extension: a BYTES output, raw contents with a 4-byte length per element, as over HTTP
    top = gclient.infer("cls", [grpc_input(x)], outputs=[grpcclient.InferRequestedOutput(CLS_OUT, class_count=1)])
    http_top = h.infer("cls", [hin], outputs=[httpclient.InferRequestedOutput(CLS_OUT, class_count=1)])
    assert top.as_numpy(CLS_OUT).tolist() == http_top.as_numpy(CLS_OUT).tolist()
    assert top.as_numpy(CLS_OUT)[0, 0].decode().endswith(f":{int(np.argmax(want[0]))}")

    # typed contents (what tritonclient never sends, other clients do)
    stub = raw_stub(servers)
    req = service_pb2.ModelInferRequest(model_name="cls")
    req.inputs.add(name="x", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub.ModelInfer(req)
    typed = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(resp.outputs[0].shape)
    np.testing.assert_array_equal(typed, http_out)


def test_concurrent_requests_form_batches(servers, gclient):
    before = {b["batch_size"]: int(b["compute_infer"]["count"])
              for b in gclient.get_inference_statistics("cls", as_json=True)["model_stats"][0].get("batch_stats", [])}
    gate = hold_inference(servers)
    results, done = [], threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 6:
            done.set()

    for i in range(6):
        gclient.async_infer("cls", [grpc_input(line(10 + i))], callback)
    deadline = time.monotonic() + 10
    while servers.app.state.host.models["cls"].batcher.queue_depth < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    assert done.wait(30)
    assert all(err is None for _, err in results), results
    stats = gclient.get_inference_statistics("cls", as_json=True)["model_stats"][0]
    grown = {int(b["batch_size"]) for b in stats["batch_stats"]
             if int(b["compute_infer"]["count"]) > before.get(b["batch_size"], 0)}
    assert max(grown) > 1, stats["batch_stats"]
    text = httpx.get(f"http://{servers.http_url}/metrics").text
    count = [ln for ln in text.splitlines() if ln.startswith('ppdeploy_batch_size_count{model="cls"}')]
    assert count and float(count[0].split()[-1]) >= 2  # the histogram saw the batches the gRPC requests formed


def test_malformed_requests_get_the_right_codes_and_the_server_stays_healthy(servers, gclient, caplog):
    caplog.set_level(logging.INFO, "ppdeploy.access")
    x = line(2)
    stats = lambda: gclient.get_inference_statistics("cls", as_json=True)["model_stats"][0]  # noqa: E731
    fails_before = int(stats()["inference_stats"]["fail"].get("count", 0))
    bad = "StatusCode.INVALID_ARGUMENT"
    cases = {
        "wrong dtype": (lambda: gclient.infer("cls", [grpc_input(x.astype(np.float64), datatype="FP64")]), bad,
                        "datatype FP64 does not match the model, which expects FP32"),
        "wrong shape": (lambda: gclient.infer("cls", [grpc_input(line(2)[:, :2])]), bad, "dim 1 is 2"),
        "too many rows": (lambda: gclient.infer("cls", [grpc_input(line(2, rows=9))]), bad,
                          "exceeds max_batch_size 8"),
        "unknown input": (lambda: gclient.infer("cls", [grpc_input(x, name="y")]), bad, "unknown input 'y'"),
        "unknown output": (lambda: gclient.infer("cls", [grpc_input(x)],
                                                 outputs=[grpcclient.InferRequestedOutput("z")]), bad,
                           "unknown output 'z'"),
        "unknown model": (lambda: gclient.infer("nope", [grpc_input(x)]), "StatusCode.NOT_FOUND",
                          "unknown model 'nope'"),
        "unknown version": (lambda: gclient.infer("cls", [grpc_input(x)], model_version="7"),
                            "StatusCode.NOT_FOUND", "has no version '7'"),
        "unknown shm region": (lambda: gclient.infer("cls", [_shm_input("nowhere", x.nbytes)]), bad,
                               "unable to find shared memory region 'nowhere'"),
        "message over the limit": (lambda: gclient.infer("cls", [grpc_input(line(3, width=4000))]),
                                   "StatusCode.RESOURCE_EXHAUSTED", ""),
    }
    for what, (call, code, text) in cases.items():
        got_code, got_text = code_of(call)
        assert got_code == code and text in got_text, (what, got_code, got_text)

    stub = raw_stub(servers)
    raw_cases = {
        "raw data shorter than the shape": ([("x", "FP32", [1, 3, 48, 192], None)], [b"\0" * 100],
                                            "needs 110592 bytes"),
        "two raw contents for one input": ([("x", "FP32", [1, 3, 48, 192], None)], [x.tobytes(), b"\0"],
                                           "raw_input_contents has 2 entries"),
        "typed contents of the wrong count": ([("x", "FP32", [1, 3, 48, 192], [1.0, 2.0])], [],
                                              "contents hold 2"),
        "negative dim": ([("x", "FP32", [1, 3, -48, 192], None)], [x.tobytes()], "negative dimension"),
        "no data": ([("x", "FP32", [1, 3, 48, 192], None)], [], "needs contents"),
        "no inputs": ([], [], "non-empty 'inputs'"),
    }
    import grpc

    for what, (inputs, raw, text) in raw_cases.items():
        req = service_pb2.ModelInferRequest(model_name="cls", raw_input_contents=raw)
        for name, dt, shape, typed in inputs:
            t = req.inputs.add(name=name, datatype=dt, shape=shape)
            if typed is not None:
                t.contents.fp32_contents.extend(typed)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in info.value.details(), \
            (what, info.value.details())

    assert gclient.is_server_live() and gclient.is_server_ready()
    np.testing.assert_array_equal(gclient.infer("cls", [grpc_input(x)]).as_numpy(CLS_OUT).shape, (1, 2))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ppdeploy.access"]
    lines = [ln for ln in lines if ln["method"] == "ModelInfer"]
    assert {"protocol": "grpc", "status": "INVALID_ARGUMENT"}.items() <= lines[0].items()
    assert lines[-1]["status"] == "OK" and lines[-1]["client"].startswith("ipv4:127.0.0.1:")
    # failures the model saw are counted like HTTP counts them (message-size rejections never reach it)
    assert int(stats()["inference_stats"]["fail"]["count"]) >= fails_before + 10


def test_queue_full_and_queue_timeout(servers, gclient):
    """A full queue answers RESOURCE_EXHAUSTED with retry-after; a request that waited past its `timeout`
    parameter DEADLINE_EXCEEDED; both counted as REJECTED failures, as over HTTP."""
    import grpc

    x = line(6)
    for model, params in (("tight", {}), ("cls", {"timeout": 100_000})):
        gate = hold_inference(servers, model)
        errors = []
        batcher = servers.app.state.host.models[model].batcher
        gclient.async_infer(model, [grpc_input(x)], lambda result, error: errors.append(error))
        wait_for(lambda: batcher.queue_depth == 0 and batcher._workers)  # taken by the (held) worker
        gclient.async_infer(model, [grpc_input(x)], lambda result, error: errors.append(error), **params)
        wait_for(lambda: batcher.queue_depth == 1 or errors)
        if model == "tight":
            stub = raw_stub(servers)
            req = service_pb2.ModelInferRequest(model_name="tight", raw_input_contents=[x.tobytes()])
            req.inputs.add(name="x", datatype="FP32", shape=x.shape)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(req)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in info.value.details()
            assert dict(info.value.trailing_metadata())["retry-after"].isdigit()
        else:
            wait_for(lambda: len(errors) == 1)
            assert errors[0].status() == "StatusCode.DEADLINE_EXCEEDED" and "timed out" in errors[0].message()
        gate.set()
        wait_for(lambda: len(errors) == 2)
        assert sum(e is None for e in errors) == (2 if model == "tight" else 1)
        stats = gclient.get_inference_statistics(model, as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["fail"]["count"]) >= 1
    text = httpx.get(f"http://{servers.http_url}/metrics").text
    for model in ("tight", "cls"):
        assert f'nv_inference_request_failure{{model="{model}",version="1",reason="REJECTED"}} 1' in text


def _shm_input(region: str, size: int, offset: int = 0) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("x", [1, 3, 48, 192], "FP32")
    inp.set_shared_memory(region, size, offset)
    return inp


def test_system_shared_memory_inputs_and_outputs(servers, gclient, cls_runner):
    import tritonclient.utils.shared_memory as shm

    x = line(4)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    out_bytes = want.nbytes
    in_handle = shm.create_shared_memory_region("in", "/ppdeploy_test_in", x.nbytes + 64)
    out_handle = shm.create_shared_memory_region("out", "/ppdeploy_test_out", out_bytes)
    try:
        shm.set_shared_memory_region(in_handle, [x], offset=64)
        gclient.register_system_shared_memory("in", "/ppdeploy_test_in", x.nbytes + 64)
        gclient.register_system_shared_memory("out", "/ppdeploy_test_out", out_bytes)
        status = gclient.get_system_shared_memory_status(as_json=True)["regions"]
        assert {n: int(r["byte_size"]) for n, r in status.items()} == {"in": x.nbytes + 64, "out": out_bytes}
        assert status["in"]["key"] == "/ppdeploy_test_in"

        out = grpcclient.InferRequestedOutput(CLS_OUT)
        out.set_shared_memory("out", out_bytes)
        result = gclient.infer("cls", [_shm_input("in", x.nbytes, offset=64)], outputs=[out])
        meta = result.get_output(CLS_OUT)
        assert list(meta.shape) == [1, 2] and meta.datatype == "FP32"
        got = shm.get_contents_as_numpy(out_handle, np.float32, [1, 2])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

        # validation: past the region, a region too small for the output, a key that is not there
        bad = "StatusCode.INVALID_ARGUMENT"
        assert code_of(lambda: gclient.infer("cls", [_shm_input("in", x.nbytes, offset=65)]))[0] == bad
        small = grpcclient.InferRequestedOutput(CLS_OUT)
        small.set_shared_memory("out", 4)
        code, text = code_of(lambda: gclient.infer("cls", [grpc_input(x)], outputs=[small]))
        assert code == bad and "too small" in text
        code, text = code_of(lambda: gclient.register_system_shared_memory("big", "/ppdeploy_test_out", 1 << 20))
        assert code == bad and "exceeds" in text
        assert code_of(lambda: gclient.register_system_shared_memory("gone", "/ppdeploy_no_such", 8))[0] == bad
        assert code_of(lambda: gclient.register_system_shared_memory("bad", "../etc/passwd", 8))[0] == bad
        assert code_of(lambda: gclient.register_system_shared_memory("in", "/ppdeploy_test_in", 8))[0] == \
            "StatusCode.ALREADY_EXISTS"
        assert code_of(lambda: gclient.get_system_shared_memory_status("nope"))[0] == "StatusCode.NOT_FOUND"

        # another client (another tag) sees none of these regions and cannot use them, but may reuse the names
        other = {"x-ppdeploy-client": "other"}
        assert gclient.get_system_shared_memory_status(headers=other, as_json=True).get("regions", {}) == {}
        code, text = code_of(lambda: gclient.infer("cls", [_shm_input("in", x.nbytes, 64)], headers=other))
        assert code == bad and "unable to find shared memory region 'in'" in text
        gclient.register_system_shared_memory("in", "/ppdeploy_test_in", x.nbytes + 64, headers=other)
        gclient.unregister_system_shared_memory(headers=other)

        gclient.unregister_system_shared_memory("out")
        assert list(gclient.get_system_shared_memory_status(as_json=True)["regions"]) == ["in"]
        gclient.unregister_system_shared_memory()
        assert gclient.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
        assert gclient.is_server_ready()
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def test_api_key_and_drain(cls_runner):
    """The API key as metadata (health exempt); on shutdown new calls get UNAVAILABLE while one in progress
    finishes, then the server stops."""
    srv = Servers([cls_config()], api_key=API_KEY).start()
    try:
        plain = grpcclient.InferenceServerClient(srv.grpc_url)
        assert plain.is_server_live() and plain.is_server_ready()
        code, text = code_of(lambda: plain.get_model_metadata("cls"))
        assert code == "StatusCode.UNAUTHENTICATED" and "API key" in text
        assert code_of(lambda: plain.infer("cls", [grpc_input(line())]))[0] == "StatusCode.UNAUTHENTICATED"
        wrong = {"authorization": "Bearer nope"}
        assert code_of(lambda: plain.get_model_metadata("cls", headers=wrong))[0] == "StatusCode.UNAUTHENTICATED"
        assert plain.get_model_metadata("cls", headers={"authorization": f"Bearer {API_KEY}"}).name == "cls"
        key = {"x-api-key": API_KEY}
        assert plain.infer("cls", [grpc_input(line())], headers=key).as_numpy(CLS_OUT).shape == (1, 2)

        gate = hold_inference(srv)
        results = []
        plain.async_infer("cls", [grpc_input(line(5))], lambda result, error: results.append((result, error)),
                          headers=key)
        deadline = time.monotonic() + 10
        while srv.app.state.host.models["cls"].batcher.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.shutdown()
        time.sleep(0.3)
        assert not plain.is_server_ready()
        code, text = code_of(lambda: plain.infer("cls", [grpc_input(line())], headers=key))
        assert code == "StatusCode.UNAVAILABLE", text
        assert srv.thread.is_alive() and not results  # still draining: the queued request is not answered yet
        gate.set()
        srv.thread.join(60)
        assert not srv.thread.is_alive()
        assert len(results) == 1 and results[0][1] is None, results
        assert results[0][0].as_numpy(CLS_OUT).shape == (1, 2)
        plain.close()
    finally:
        if srv.thread.is_alive():
            srv.stop()
