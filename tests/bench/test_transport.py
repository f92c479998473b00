"""The load generator's gRPC mode and shared-memory inputs, against a real `ppdeploy serve --grpc-port` child.

What they prove: open-loop gRPC requests (serialized once, sent on one HTTP/2 channel) are answered and counted
like HTTP ones; gRPC errors land in the same buckets (a wrong model is an error answer, a closed port a
failure); inputs placed in system shared memory are registered, used by HTTP and gRPC requests alike, and
unregistered and destroyed afterwards; `ppdeploy loadtest --protocol grpc --shm` writes its report.
"""
from __future__ import annotations

import json
import os
import socket

import httpx
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="gRPC mode needs pip install 'ppdeploy[grpc]'")

from ppdeploy.bench.load import (  # noqa: E402
    LoadSettings,
    SharedMemoryInputs,
    grpc_v2_request,
    run_load,
    v2_request,
)
from ppdeploy.bench.server_process import ServerProcess  # noqa: E402
from ppdeploy.bench.serving import near_free_model  # noqa: E402

SHAPE = (2, 3, 96, 96)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = near_free_model(tmp_path_factory.mktemp("transport") / "m.onnx", SHAPE[1:], 2)
    port = _free_port()
    with ServerProcess([str(model), "--name", "m", "--backend", "onnxruntime", "--max-batch-size", "8",
                        "--grpc-port", str(port)], ready_timeout_s=300) as srv:
        yield srv.url, f"grpc://127.0.0.1:{port}"


X = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
SETTINGS = LoadSettings(timeout_s=30, drain_s=30, workers=1)


@pytest.mark.slow
def test_grpc_open_loop_answers_every_request(served):
    http_url, grpc_url = served
    [res] = run_load(grpc_url, grpc_v2_request("m", {"x": X}), [40.0], 1.0, "constant", SETTINGS)
    assert res.ok == res.scheduled == 40, res.error_examples
    assert res.failures == res.http_errors == res.dropped == 0
    assert 0 < res.latency_ms["p50"] < 5000
    # the same server over HTTP, same schedule
    [ref] = run_load(http_url, v2_request("m", {"x": X}), [40.0], 1.0, "constant", SETTINGS)
    assert ref.ok == ref.scheduled == 40, ref.error_examples


@pytest.mark.slow
def test_grpc_errors_and_failures_are_counted(served):
    _, grpc_url = served
    [wrong] = run_load(grpc_url, grpc_v2_request("nope", {"x": X}), [10.0], 0.5, "constant", SETTINGS)
    assert wrong.ok == 0 and wrong.http_errors == wrong.scheduled == 5
    assert any("NOT_FOUND" in e for e in wrong.error_examples), wrong.error_examples
    bad_shape = np.zeros((1, 3, 5, 5), np.float32)
    [bad] = run_load(grpc_url, grpc_v2_request("m", {"x": bad_shape}), [10.0], 0.5, "constant", SETTINGS)
    assert bad.ok == 0 and bad.http_errors == 5 and any("INVALID_ARGUMENT" in e for e in bad.error_examples)
    closed = f"grpc://127.0.0.1:{_free_port()}"
    [gone] = run_load(closed, grpc_v2_request("m", {"x": X}), [10.0], 0.3, "constant",
                      LoadSettings(timeout_s=2, drain_s=2, workers=1))
    assert gone.ok == 0 and gone.failures == gone.scheduled == 3, gone.error_examples


@pytest.mark.slow
def test_shared_memory_inputs_over_http_and_grpc(served):
    http_url, grpc_url = served
    with SharedMemoryInputs(http_url, {"x": X}, prefix="ppdeploy-test-transport") as shm:
        region = shm.params["x"]["shared_memory_region"]
        status = httpx.get(f"{http_url}/v2/systemsharedmemory/region/{region}/status").json()
        assert status[0]["byte_size"] == X.nbytes, status
        key = status[0]["key"]
        assert os.path.exists(f"/dev/shm/{key.lstrip('/')}")
        for url, template in ((http_url, v2_request("m", {"x": X}, shm=shm)),
                              (grpc_url, grpc_v2_request("m", {"x": X}, shm))):
            assert len(template.content) < 1000  # the tensor (221 KB) stays in shared memory
            [res] = run_load(url, template, [30.0], 1.0, "constant", SETTINGS)
            assert res.ok == res.scheduled == 30, res.error_examples
        # a region larger than what was registered is refused, over both protocols
        shm.params["x"] = {**shm.params["x"], "shared_memory_byte_size": X.nbytes * 2}
        for url, template in ((http_url, v2_request("m", {"x": X}, shm=shm)),
                              (grpc_url, grpc_v2_request("m", {"x": X}, shm))):
            [res] = run_load(url, template, [10.0], 0.3, "constant", SETTINGS)
            assert res.ok == 0 and res.http_errors == 3, res.error_examples
    assert httpx.get(f"{http_url}/v2/systemsharedmemory/status").json() == []
    assert not os.path.exists(f"/dev/shm/{key.lstrip('/')}")


@pytest.mark.slow
def test_loadtest_cli_grpc_with_shared_memory(served, tmp_path):
    from ppdeploy.cli import main

    http_url, grpc_url = served
    port = grpc_url.rsplit(":", 1)[1]
    out = tmp_path / "lt"
    assert main(["loadtest", http_url, "--model", "m", "--protocol", "grpc", "--grpc-port", port, "--shm",
                 "--rate", "20", "--duration", "0.5", "--distribution", "constant", "--out", str(out)]) == 0
    data = json.loads((out / "loadtest.json").read_text())
    assert data["rates"][0]["ok"] == data["rates"][0]["scheduled"] == 10
    assert "gRPC ModelInfer m" in json.dumps(data) and "shared memory" in json.dumps(data)
    assert main(["loadtest", http_url, "--kind", "ocr", "--protocol", "grpc", "--rate", "1", "--out", str(out)]) == 2
    assert main(["loadtest", http_url, "--model", "m", "--protocol", "grpc", "--grpc-port", "0", "--rate", "1",
                 "--out", str(out)]) == 2
