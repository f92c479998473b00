"""The lean install (issue 20): the base dependencies alone serve an ONNX model, without paddlepaddle.

A fresh virtual environment gets `pip install <repo>` (no extras; pip's cache and configured indexes make a
repeat run cheap), then `ppdeploy serve` of a tiny ONNX model answers a real KServe v2 request from httpx and
tritonclient on loopback, `ppdeploy run` and `ppdeploy doctor` work, and the training framework, the plotting
library and OpenVINO are not importable there. A feature of a missing extra names the `pip install` that adds it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "tiny", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("base-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(REPO)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def _py(venv: Path, code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_base_install_has_no_training_framework_and_names_the_extras(base_venv):
    probe = _py(base_venv, "import importlib.util as u, ppdeploy; "
                           "print([m for m in ('paddle', 'paddle2onnx', 'matplotlib', 'openvino', 'ray', 'grpc') "
                           "if u.find_spec(m)])")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", probe.stdout
    hints = _py(base_venv, "from ppdeploy.core.lazy import import_paddle, lazy_import\n"
                           "for f in (import_paddle, lambda: lazy_import('openvino').Core, "
                           "lambda: lazy_import('tritonclient.grpc.service_pb2').ModelInferRequest):\n"
                           "    try: f()\n"
                           "    except Exception as e: print(e.hint)\n")
    assert hints.stdout.split("\n")[:3] == ["pip install 'ppdeploy[paddle]'", "pip install 'ppdeploy[openvino]'",
                                            "pip install 'ppdeploy[grpc]'"], hints.stdout + hints.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_base_install_serves_an_onnx_model(base_venv, tmp_path):
    import httpx
    import tritonclient.http as httpclient

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    bin_dir = base_venv / "bin"
    env = {**os.environ, "PPDEPLOY_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([str(bin_dir / "ppdeploy"), "run", str(model)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and "backend onnxruntime" in run.stdout, run.stdout + run.stderr
    doctor = subprocess.run([str(bin_dir / "ppdeploy"), "doctor"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert doctor.returncode == 0, doctor.stderr
    rows = doctor.stdout.split("backends", 1)[1]
    assert "onnxruntime" in rows and "paddlepaddle is not installed" in rows, doctor.stdout

    port = _free_port()
    server = subprocess.Popen([str(bin_dir / "ppdeploy"), "serve", str(model), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the base-install server never became ready")
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 1, 1, 1, 2, 2, 2, 2]}]}
        r = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4, 2, 4, 6, 8]

        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = client.infer("tiny", [inp]).as_numpy("y")
        np.testing.assert_array_equal(out, x * np.array([1, 2, 3, 4], np.float32))
        bad = httpx.post(f"{url}/v2/models/tiny/infer", json={"inputs": [{"name": "x", "shape": [1, 3],
                                                                          "datatype": "FP32", "data": [1, 2, 3]}]})
        assert bad.status_code == 400, bad.text
    finally:
        server.terminate()
        server.wait(timeout=60)
