"""Load test through Ray Serve on loopback: 1 vs 2 replicas per model (not a test; run it by hand).

    python tests/ray/bench_ray_replicas.py [--duration 8] [--out ray-bench.json]

For each layout a local Ray cluster (2 CPUs) serves PP-OCRv4 det, cls, rec on ONNX Runtime plus the /v1/ocr
pipeline (det + rec); ppdeploy's open-loop generator (ppdeploy.bench.load) sends KServe v2 binary-tensor requests
to cls (1x3x48x192 in, 1x2 out: small transfers, so the serving path shows) and PNG pages to /v1/ocr at a sweep
of offered rates. The same repository on the plain `ppdeploy serve` (no Ray) is measured as the reference. The
generator shares the machine's cores with the server, so absolute numbers are pessimistic; the comparison
between layouts is the point.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cls_template():
    from ppdeploy.bench.load import RequestTemplate

    x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    blob = x.tobytes()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return RequestTemplate("POST", "/v2/models/cls/infer", header + blob,
                           {"content-type": "application/octet-stream",
                            "inference-header-content-length": str(len(header))}, describe="v2 cls [1,3,48,192] binary")


def page_png() -> bytes:
    import cv2

    image = np.full((480, 640, 3), 255, np.uint8)
    for row, text in enumerate(["Ray Serve load test", "two replicas per model", "ppdeploy 2026", "PP-OCRv4 det+rec"]):
        cv2.putText(image, text, (20, 80 + row * 100), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (0, 0, 0), 3, cv2.LINE_AA)
    return cv2.imencode(".png", image)[1].tobytes()


def model_configs(threads: int, instances: int = 1) -> list:
    from ppdeploy.repository.config import ModelConfig

    common = dict(backends=["onnxruntime"], threads=threads, max_batch_size=8, instance_count=instances,
                  dynamic_batching={"max_queue_delay_ms": 2, "max_queue_size": 512})
    return [ModelConfig(name="det", source="ppocrv4-det", **common),
            ModelConfig(name="cls", source="ppocr-cls", **common),
            ModelConfig(name="rec", source="ppocrv4-rec", **common),
            ModelConfig(name="ocr", task="ocr", pipeline={"det": "det", "rec": "rec"})]


def measure(url: str, duration: float, cls_rates, ocr_rates) -> dict:
    from ppdeploy.bench.load import LoadSettings, image_request, run_load

    settings = LoadSettings(timeout_s=15, drain_s=15)
    out = {}
    for label, template, rates in (("v2_cls", cls_template(), cls_rates),
                                   ("ocr", image_request("ocr", page_png()), ocr_rates)):
        run_load(url, template, [rates[0]], 2.0, settings=settings)  # warm-up, not recorded
        results = run_load(url, template, rates, duration, settings=settings)
        out[label] = [{"offered": r.offered_rate, "achieved_rps": round(r.achieved_rps, 2), "ok": r.ok,
                       "errors": r.http_errors + r.failures + r.http_429,
                       "p50_ms": r.latency_ms and round(r.latency_ms["p50"], 1),
                       "p99_ms": r.latency_ms and round(r.latency_ms["p99"], 1)} for r in results]
    return out


def run_ray_layout(replicas: int, threads: int, duration: float, cls_rates, ocr_rates) -> dict:
    import ray
    from ray import serve

    from ppdeploy.serve import ray as ppray
    from ppdeploy.serve.http import ServerSettings

    env = {"PPDEPLOY_CACHE": os.environ["PPDEPLOY_CACHE"]} if "PPDEPLOY_CACHE" in os.environ else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    started = time.perf_counter()
    try:
        url = ppray.start(model_configs(threads), ppray.RayOptions(replicas=replicas, num_cpus_per_replica=0.25,
                                                                   gateway_num_cpus=0.25),
                          ServerSettings(host="127.0.0.1", port=free_port()), timeout_s=600)
        layout = {"server": "ray", "replicas": replicas, "threads": threads,
                  "startup_s": round(time.perf_counter() - started, 1)}
        layout.update(measure(url, duration, cls_rates, ocr_rates))
        print(json.dumps(layout), flush=True)
        return layout
    finally:
        serve.shutdown()
        ray.shutdown()


def run_plain_server(instances: int, threads: int, duration: float, cls_rates, ocr_rates) -> dict:
    """The same repository on `ppdeploy serve` (one process, ppdeploy's batcher), as the reference."""
    import tempfile

    from ppdeploy.bench.server_process import ServerProcess

    with tempfile.TemporaryDirectory() as repo:
        for cfg in model_configs(threads, instances):
            cfg.write(repo)
        started = time.perf_counter()
        with ServerProcess(["--repo", repo], ready_timeout_s=600) as server:
            url = server.url
            layout = {"server": "ppdeploy serve", "instances": instances, "threads": threads,
                      "startup_s": round(time.perf_counter() - started, 1)}
            layout.update(measure(url, duration, cls_rates, ocr_rates))
            print(json.dumps(layout), flush=True)
            return layout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals per offered rate")
    parser.add_argument("--out", default="ray-bench.json")
    parser.add_argument("--cls-rates", default="25,50,100,150", help="offered rates (req/s) for v2 cls")
    parser.add_argument("--ocr-rates", default="1,2,4,6", help="offered rates (req/s) for /v1/ocr")
    parser.add_argument("--layouts", default="plain:1x1,plain:2x1,ray:1x1,ray:2x1,ray:1x2",
                        help="server:COPIESxTHREADS list; copies = instances (plain) or replicas (ray)")
    args = parser.parse_args()
    import ray

    cls_rates = [float(r) for r in args.cls_rates.split(",")]
    ocr_rates = [float(r) for r in args.ocr_rates.split(",")]
    layouts = []
    for item in args.layouts.split(","):
        server, _, shape = item.partition(":")
        copies, threads = (int(v) for v in shape.split("x"))
        run = run_plain_server if server == "plain" else run_ray_layout
        layouts.append(run(copies, threads, args.duration, cls_rates, ocr_rates))
    report = {"ray": ray.__version__, "cpus": os.cpu_count(), "duration_s": args.duration, "layouts": layouts}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
