"""Ray Serve: a local Ray cluster started by a driver process (serve_driver.py), ppdeploy's Serve application with 2 replicas per model answering
KServe v2 (through the real Triton HTTP client) and /v1/ocr correctly, then a clean shutdown.

Small on purpose (this suite runs on 2 shared cores): PP-OCRv4 det + rec on ONNX Runtime with 1 thread, two
replicas each, one gateway; Ray gets 2 CPUs and no dashboard."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

from ppdeploy.repository.config import ModelConfig  # noqa: E402
from ppdeploy.serve import ray as ppray  # noqa: E402

APP = "ppdeploy-under-test"  # not ppray.APP_NAME: the gateway must find its models under the name it was given
DRIVER_PREFIX = "ppdeploy-driver: "  # serve_driver.PREFIX
COMMON = dict(backends=["onnxruntime"], threads=1, max_batch_size=4, dynamic_batching={"max_queue_delay_ms": 5})


def configs() -> list[ModelConfig]:
    return [ModelConfig(name="det", source="ppocrv4-det", **COMMON),
            ModelConfig(name="rec", source="ppocrv4-rec", **COMMON),
            ModelConfig(name="ocr", task="ocr", pipeline={"det": "det", "rec": "rec"})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_image() -> bytes:
    import cv2

    image = np.full((160, 640, 3), 255, np.uint8)
    cv2.putText(image, "RAY 2026", (20, 70), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, "replicas ok", (20, 140), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3, cv2.LINE_AA)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def local_engines():
    """The same models loaded here, as the reference (this also fills the engine cache the replicas read)."""
    from ppdeploy.serve.models import load_engine

    engines = {cfg.name: load_engine(cfg) for cfg in configs() if cfg.task != "ocr"}
    yield {name: engine.runners[0] for name, engine in engines.items()}
    for engine in engines.values():
        for runner in engine.runners:
            runner.close()


class Driver:
    """serve_driver.py in its own process (why: see that file), and what it reported once the app was ready."""

    def __init__(self):
        port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_driver.py")), str(port), APP],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read()
        self.url = self.ready["url"]

    def read(self) -> dict:
        """The driver's next report; Ray's own lines on the same stdout are skipped."""
        for line in self.proc.stdout:
            if line.startswith(DRIVER_PREFIX):
                return json.loads(line[len(DRIVER_PREFIX):])
        raise AssertionError(f"the Ray driver exited with code {self.proc.wait(60)} before answering")

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> tuple[int, dict | None]:
        """Close stdin (the driver shuts Ray down); its exit code and last report."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            last = self.read()
            return self.proc.wait(120), last
        return self.proc.returncode, None


@pytest.fixture(scope="module")
def driver(local_engines):
    """A local Ray cluster and the app, started by a driver process (local_engines first: it fills the cache)."""
    driver = Driver()
    yield driver
    if driver.proc.poll() is None:
        try:
            driver.stop()
        finally:
            if driver.proc.poll() is None:
                driver.proc.kill()


@pytest.fixture(scope="module")
def cluster(driver) -> str:
    return driver.url


def test_two_replicas_per_model_are_running_in_separate_processes(driver):
    assert driver.ready["replica_states"] == {"det": {"RUNNING": 2}, "rec": {"RUNNING": 2}}
    pids = set(driver.ready["rec_pids"])  # 24 calls through a deployment handle, answered by both replicas
    assert len(pids) == 2 and not pids & {os.getpid(), driver.ready["driver_pid"]}


def test_v2_infer_through_tritonclient_matches_local_runner(cluster, local_engines):
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(cluster.removeprefix("http://"), concurrency=8)
    assert client.is_server_ready() and client.is_model_ready("rec")
    metadata = client.get_model_metadata("rec")
    assert metadata["inputs"][0]["shape"] == [-1, 3, 48, -1]
    output_name = metadata["outputs"][0]["name"]
    rng = np.random.default_rng(7)
    # Concurrent requests of two widths: Ray batches the same-shaped ones, both replicas answer.
    inputs = [rng.random((1, 3, 48, 320 if i % 2 else 160), dtype=np.float32) for i in range(12)]

    def send(x: np.ndarray):
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        return client.async_infer("rec", [tensor])  # tritonclient's own concurrency (gevent, not threads)

    pending = [send(x) for x in inputs]
    answers = [request.get_result().as_numpy(output_name) for request in pending]
    client.close()
    reference = local_engines["rec"]
    for x, got in zip(inputs, answers):
        want = reference.infer({"x": x})[output_name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_metrics_are_the_replicas_figures(cluster):
    """Under Ray the execution count, batch sizes and queue time come from the replicas (they read 0 before)."""
    from concurrent.futures import ThreadPoolExecutor

    def stats() -> dict:
        return httpx.get(f"{cluster}/v2/models/rec/stats", timeout=30).json()["model_stats"][0]

    before = stats()
    x = np.random.default_rng(9).random((1, 3, 48, 160), dtype=np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"{cluster}/v2/models/rec/infer", json=body, timeout=60).status_code,
                              range(8)))
    assert codes == [200] * 8
    after = stats()
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == 8  # rows run, each counted once
    assert 1 <= executions <= 8
    queue = after["inference_stats"]["queue"]
    assert queue["count"] - before["inference_stats"]["queue"]["count"] == 8 and queue["ns"] > 0
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    text = httpx.get(f"{cluster}/metrics", timeout=30).text
    [histogram] = [ln for ln in text.splitlines() if ln.startswith('ppdeploy_batch_size_count{model="rec"}')]
    assert float(histogram.rsplit(" ", 1)[1]) == after["execution_count"]  # one batch-size sample per execution


def test_v2_bad_request_is_a_400_with_the_reason(cluster):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * (3 * 32 * 32)}]}
    response = httpx.post(f"{cluster}/v2/models/rec/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "dim 2" in response.json()["error"]
    assert httpx.post(f"{cluster}/v2/models/nope/infer", json=body, timeout=30).status_code == 404


def test_ocr_route_matches_the_local_pipeline(cluster, local_engines):
    from ppdeploy import OCR

    image = text_image()
    response = httpx.post(f"{cluster}/v1/ocr", content=image, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    lines = response.json()["lines"]
    reference = OCR.from_runners(local_engines["det"], local_engines["rec"], None).predict(image)
    assert [line["text"] for line in lines] == [line.text for line in reference.lines]
    assert [line["box"] for line in lines] == [line.box for line in reference.lines]
    assert "2026" in lines[0]["text"]
    bad = httpx.post(f"{cluster}/v1/ocr", content=b"not an image", headers={"content-type": "image/png"}, timeout=30)
    assert bad.status_code == 400


def test_clean_shutdown(driver):
    assert driver.send("serve-shutdown") == {"serve_stopped": True}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{driver.url}/v2/health/live", timeout=5)
    code, last = driver.stop()
    assert last == {"ray_initialized": False} and code == 0


def test_cli_serve_ray_answers_and_stops_on_sigterm(tmp_path):
    """`ppdeploy serve MODEL --ray` in its own process: ready, answers v2, exits 0 on SIGTERM with the port closed."""
    import signal
    import time

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ppdeploy", "serve", "ppocr-cls", "--ray", "--replicas", "1",
                                 "--backend", "onnxruntime", "--threads", "1", "--num-cpus-per-replica", "0.25",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "Ctrl-C stops it" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(1)
        x = np.zeros((2, 3, 48, 192), np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        response = httpx.post(f"{url}/v2/models/ppocr-cls/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [2, 2]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code == 0, log_path.read_text()[-3000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/health/live", timeout=5)


def test_options_map_to_ray_deployment_settings():
    cfg = ModelConfig(name="rec", source="ppocrv4-rec", max_batch_size=16,
                      autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3})
    scaled = ppray.model_deployment_options(cfg, ppray.RayOptions(num_gpus_per_replica=0.5))
    assert scaled["autoscaling_config"]["max_replicas"] == 4
    assert scaled["autoscaling_config"]["target_ongoing_requests"] == 3
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_gpus"] == 0.5
    assert scaled["max_ongoing_requests"] >= 16
    fixed = ppray.model_deployment_options(cfg, ppray.RayOptions(replicas=3))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    from ppdeploy.core.errors import ConfigError

    with pytest.raises(ConfigError):
        ppray.RayOptions(replicas=0).check()
    with pytest.raises(Exception, match="min_replicas"):
        ModelConfig(name="x", source="ppocrv4-rec", autoscaling={"min_replicas": 5, "max_replicas": 2})
