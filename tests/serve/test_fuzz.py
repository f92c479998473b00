"""Bad input never gets a 5xx: fixed regressions, then hypothesis over the v2 JSON and binary protocol and /v1.

The app runs in-process (ASGI, httpx) with a real small model (ppocr-cls on ONNX Runtime, served on /v2 and, as
a classification task, on /v1/classify). Hypothesis is derandomized (the same cases on every run, no example
database), so CI sees a fixed set. After the fuzzing the server must still be ready and answer a valid request
with the direct runner's outputs.
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import InputError
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app
from ppdeploy.serve.batcher import (
    BatcherSettings,
    DynamicBatcher,
    InferenceFailed,
    RequestTooLarge,
)
from tests.serve.conftest import CLS_OUT, REC_OUT

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=1000,
                suppress_health_check=list(HealthCheck))
INFER = "/v2/models/cls/infer"


class _Server:
    """The app's lifespan on a loop of its own thread, so hypothesis' synchronous tests can send requests."""

    def __init__(self):
        cfg = ModelConfig.for_source("ppocr-cls", name="cls", backends=["onnxruntime"], task="classification",
                                     max_batch_size=4)
        self.app = build_app([cfg])
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._up = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._up.wait(300), "the app did not start"

    async def _main(self):
        self._stop = asyncio.Event()
        async with self.app.router.lifespan_context(self.app):
            await self.app.state.host.wait_loaded()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t",
                                         timeout=60) as self.client:
                self._up.set()
                await self._stop.wait()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(self.client.request(method, path, **kwargs), self.loop).result(120)

    def close(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


def _valid_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _assert_healthy(server: _Server, cls_runner) -> None:
    assert server.request("GET", "/v2/health/ready").status_code == 200
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192), dtype=np.float32)
    r = server.request("POST", INFER, json=_valid_body(x))
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 2)
    np.testing.assert_allclose(got, cls_runner.infer(x)[CLS_OUT], rtol=0, atol=1e-5)


def _no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])


# -- fixed regressions ----------------------------------------------------------------------------------------
def test_deeply_nested_json_is_a_400(server, cls_runner):
    deep = "[" * 5000 + "]" * 5000
    for body in (deep,
                 '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + deep + "}]}",
                 '{"inputs": ' + "{\"a\": " * 3000 + "1" + "}" * 3000 + "}"):
        r = server.request("POST", INFER, content=body.encode())
        assert r.status_code == 400 and "too deeply" in r.json()["error"], r.text[:200]
        header = body.encode()
        r = server.request("POST", INFER, content=header + b"\0" * 8,
                           headers={"Inference-Header-Content-Length": str(len(header))})
        assert r.status_code == 400 and "too deeply" in r.json()["error"], r.text[:200]
    _assert_healthy(server, cls_runner)


def test_an_input_over_the_element_limit_is_a_413_naming_the_limit(server, cls_runner):
    x = np.zeros((1, 3, 48, 1 << 17), np.float32)  # 18.9 M elements, 75 MB: over the default 16.7 M
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    app = server.app
    old = app.state.settings.max_body_bytes
    app.state.settings.max_body_bytes = 128 << 20  # let the body in: the model's own limit is what is tested
    try:
        r = server.request("POST", INFER, content=header + x.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header))})
    finally:
        app.state.settings.max_body_bytes = old
    assert r.status_code == 413 and "limits.max_input_elements" in r.json()["error"], r.text[:300]
    _assert_healthy(server, cls_runner)


def test_a_rec_line_whose_output_would_be_huge_is_a_413_before_it_runs_even_on_a_cold_server(rec_runner):
    """Issue 18's case: a 64 MB PP-OCRv4 rec input of [1, 3, 48, ~110 000] whose output alone is ~360 MB. The
    batcher's start-up probe sizes rec's [N, T, C] output, so the very first request is held to the limit."""
    calls = []

    class Counting(Runner):
        backend = "counting"

        def __init__(self):
            super().__init__(rec_runner.io)

        def _infer(self, feeds):
            calls.append({n: a.shape for n, a in feeds.items()})
            return rec_runner.infer(feeds)

    async def main():
        b = DynamicBatcher("rec", [Counting()], BatcherSettings(max_batch_size=4))
        await b.start()  # probes once at the trial shape
        assert len(calls) == 1
        with pytest.raises(RequestTooLarge) as err:  # the first request
            await b.infer({"x": np.zeros((1, 3, 48, 110_000), np.float32)})
        small = await b.infer({"x": np.zeros((1, 3, 48, 320), np.float32)})
        assert small.outputs[REC_OUT].shape == (1, 40, 6625)
        await b.close()
        return err.value

    err = asyncio.run(main())
    assert err.status == 413 and "limits.max_output_bytes" in str(err) and "MiB" in str(err)
    assert len(calls) == 2 and calls[1]["x"] == (1, 3, 48, 320)  # the probe and the small line: the wide one never ran


def test_engine_errors_are_classified_by_whose_fault_they_are(cls_runner):
    class Failing(Runner):
        backend = "failing"

        def __init__(self, exc):
            super().__init__(cls_runner.io)
            self.exc = exc

        def _infer(self, feeds):
            if feeds["x"].shape[3] == 64:
                return cls_runner.infer(feeds)
            raise self.exc

    async def run(exc, width, warm=False):
        b = DynamicBatcher("cls", [Failing(exc)], BatcherSettings(max_batch_size=1))
        await b.start()
        try:
            if warm:  # the same shape ran before: now the engine's failure is the server's fault
                b._seen_shapes.add((b._key({"x": np.zeros((1, 3, 48, width), np.float32)}), 1))
            return await b.infer({"x": np.zeros((1, 3, 48, width), np.float32)})
        except Exception as e:
            return e
        finally:
            await b.close()

    assert isinstance(asyncio.run(run(MemoryError("std::bad_alloc"), 96)), RequestTooLarge)
    shape = asyncio.run(run(RuntimeError("Conv: invalid input shape {1,3,48,96}"), 96))
    assert isinstance(shape, InputError) and not isinstance(shape, InferenceFailed) and "[1, 3, 48, 96]" in str(shape)
    assert isinstance(asyncio.run(run(RuntimeError("Conv: invalid input shape"), 96, warm=True)), InferenceFailed)
    fault = asyncio.run(run(RuntimeError("CUDA error: an illegal memory access was encountered"), 96))
    assert isinstance(fault, InferenceFailed) and fault.status == 500


# -- fuzzing --------------------------------------------------------------------------------------------------
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                       st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                                  inner, max_size=4),
                     max_leaves=12)
_names = st.sampled_from(["x", "y", "", "X", "softmax_0.tmp_0"]) | st.text(max_size=6)
_datatypes = st.sampled_from(["FP32", "FP16", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES", "BF16", "fp32",
                              "", "INT8"]) | _json
_dims = st.integers(-2, 300) | st.sampled_from([0, 1, 3, 48, 192, 2**31, 2**63 - 1, 2**64])
_shapes = st.lists(_dims, max_size=5) | _json
_input = st.fixed_dictionaries({}, optional={
    "name": _names | _json, "datatype": _datatypes, "shape": _shapes,
    "data": st.lists(st.floats(allow_nan=True) | st.integers(-300, 300) | st.booleans() | st.text(max_size=3),
                     max_size=40) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 2000) | _json,
                                                      "shared_memory_region": _json,
                                                      "shared_memory_byte_size": st.integers(-5, 100)}) | _json})
_output = st.fixed_dictionaries({}, optional={"name": _names | _json, "parameters": st.fixed_dictionaries(
    {}, optional={"binary_data": _json, "classification": st.integers(-3, 5) | _json}) | _json})
_request = st.fixed_dictionaries({}, optional={
    "id": _json, "inputs": st.lists(_input, max_size=3) | _json, "outputs": st.lists(_output, max_size=3) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": _json,
                                                      "timeout": st.integers(-5, 10**7) | _json}) | _json})


@FUZZ
@given(body=_request | _json)
def test_fuzz_v2_json(server, body):
    _no_5xx(server.request("POST", INFER, content=json.dumps(body).encode()))


@FUZZ
@given(header=_request, blob=st.binary(max_size=2048), cut=st.integers(-10, 3000) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4),
       encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity"]))
def test_fuzz_v2_binary(server, header, blob, cut, encoding):
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head) if isinstance(cut, int) and cut % 3 == 0 else cut)}
    if encoding:
        headers["Content-Encoding"] = encoding
    _no_5xx(server.request("POST", INFER, content=head + blob, headers=headers))


_PNG = b"\x89PNG\r\n\x1a\n"
_IHDR = st.builds(lambda w, h: _PNG + struct.pack(">I4sIIBBBBB", 13, b"IHDR", w, h, 8, 2, 0, 0, 0),
                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@FUZZ
@given(data=st.binary(max_size=512) | _IHDR | st.builds(lambda b: b"\xff\xd8\xff" + b, st.binary(max_size=256)),
       ctype=st.sampled_from(["", "image/png", "image/jpeg", "application/octet-stream", "application/json",
                              "multipart/form-data", "multipart/form-data; boundary=xyz", "text/plain"]),
       path=st.sampled_from(["/v1/classify", "/v1/classify/cls", "/v1/classify/nope", "/v1/ocr"]))
def test_fuzz_v1_routes(server, data, ctype, path):
    _no_5xx(server.request("POST", path, content=data, headers={"Content-Type": ctype} if ctype else {}))


@FUZZ
@given(data=st.binary(max_size=256), name=st.text(max_size=6),
       model=st.sampled_from(["cls", "nope", "cls/versions/1", "cls/versions/x", "%00", ".."]))
def test_fuzz_multipart_and_paths(server, data, name, model):
    files = {name or "image": ("f.png", io.BytesIO(data), "image/png")}
    _no_5xx(server.request("POST", "/v1/classify", files=files))
    _no_5xx(server.request("POST", f"/v2/models/{model}/infer", content=data))
    _no_5xx(server.request("GET", f"/v2/models/{model}"))


def test_the_server_is_healthy_and_correct_after_the_fuzzing(server, cls_runner):
    _assert_healthy(server, cls_runner)
    metrics = server.request("GET", "/metrics").text
    assert 'status="500"' not in metrics
