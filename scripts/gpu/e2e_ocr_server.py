"""Device run: PP-OCR pages/s end to end on the GPU, and ppdeploy's dynamic-batching server with the
onnxruntime-cuda backend under open-loop Poisson load (batched vs batch-1, and vs the raw runner).

Needs (see scripts/gpu/README.md): the ORT GPU payload, .gpu-carry/{onnx,cache,pages,whl}. Writes $OUT/e2e.json.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend
from ppdeploy.backends.onnxruntime_cuda import OnnxRuntimeCUDABackend
from ppdeploy.core.device import gpu_info

ONNX = Path(os.environ["PPDEPLOY_TEST_ONNX_DIR"])
PAGES = next(Path(os.environ.get("PPDEPLOY_TEST_PAGES", ".gpu-carry/pages")).glob("synth-*"))
OUT = Path(os.environ.get("OUT", "."))
SERVER_BACKEND = os.environ.get("E2E_BACKEND", "onnxruntime-cuda")  # onnxruntime: CPU smoke test of this script
RESULTS: dict = {"gpu": gpu_info(), "pages": str(PAGES), "ocr": {}, "server": {}}


def runner(backend, model: Path, **extra):
    d = Path(tempfile.mkdtemp())
    backend.build(model, d, BuildOptions(extra=extra))
    return backend.load(d, BuildOptions(extra=extra))


def save() -> None:
    (OUT / "e2e.json").write_text(json.dumps(RESULTS, indent=1, default=str))


# ------------------------------------------------------------------------------------------------ OCR pages/s

def _passes(label: str, ocr) -> list[dict]:
    from ppdeploy.tasks.ocr.evaluate import evaluate_ocr

    passes = []
    for i in range(3):  # pass 0 meets every shape first (sessions, cuDNN search); later passes are warm
        t = time.perf_counter()
        ev = evaluate_ocr(ocr, PAGES)
        slow = i >= 1 and time.perf_counter() - t > 30
        passes.append(ev.to_dict())
        print(f"{label:36s} pass {i}: {ev.run.pages_per_s:7.2f} pages/s  char_acc {ev.metrics.char_accuracy:.4f}"
              f"  det_recall {ev.metrics.det_recall:.3f}  stage_ms {json.dumps({k: round(v, 1) for k, v in ev.run.stage_ms.items()})}",
              flush=True)
        if slow:  # no time for more passes of a slow variant in one device call
            break
    return passes


def ocr_pages() -> None:
    from ppdeploy.tasks.ocr.builder import OCR

    dict_kw = {"rec_dictionary": os.environ["E2E_DICT"]} if os.environ.get("E2E_DICT") else {}
    big = {"rec_batch_size": 32, "cls_batch_size": 32, **dict_kw}  # PaddleOCR's 6 suits CPUs; a GPU wants larger batches
    gpu = OnnxRuntimeCUDABackend()
    # Runs 3-4 (bench/gpu/e2e_ocr_run*.json): with one ORT session for all shapes, every shape change re-planned
    # the convolutions (0.3-1.7 pages/s, below the CPU's 2.45). The runner now keeps a session per shape bucket.
    # Shape buckets: det pages (longest side <= 960) all padded to 960x960, rec widths to multiples of 320, batch
    # dims to powers of two: a few shapes per model instead of one per call, each with its own warm session.
    buckets = {"det": {"pad_multiple": {"x": {"2": 960, "3": 960}}},
               "rec": {"pad_multiple": {"x": {"3": 320}}, "max_cached_shapes": 24},
               "cls": {"max_cached_shapes": 16}}
    variants = [
        ("gpu fp32 EXHAUSTIVE, shape buckets", gpu, "", buckets, {}),
        ("gpu fp32 EXHAUSTIVE, shape buckets, rec/cls batch 32", gpu, "", buckets, big),
        ("gpu fp16 EXHAUSTIVE, shape buckets, rec/cls batch 32", gpu, ".fp16", buckets, big),
    ]
    if os.environ.get("E2E_CPU"):
        variants.insert(0, ("cpu fp32 onnxruntime 16 threads", OnnxRuntimeBackend(), "", {}, {}))
    # OCR(backend=...) as a user writes it: the task's own default GPU shape buckets (GPU_SHAPE_BUCKETS).
    # Since run 11 the defaults include the ctc_greedy rec head on a GPU (ppdeploy.graph.heads); the second
    # variant is the same pipeline with the whole softmax copied back, as before.
    default_label = f"OCR(backend='{SERVER_BACKEND}') defaults"
    variants[:0] = [(default_label, None, "", {}, {}),
                    (default_label + ", rec_head=None (softmax)", None, "", {}, {"rec_head": None})]
    wanted = os.environ.get("E2E_OCR_VARIANTS")  # "default": only the OCR(backend=...) variants
    if wanted == "default":
        variants = variants[:2]
    for label, be, suffix, extra, ocr_kwargs in variants:
        if be is None:
            ocr = OCR(backend=SERVER_BACKEND, det_model=str(ONNX / "ppocrv4-det.onnx"),
                      rec_model=str(ONNX / "ppocrv4-rec.onnx"), cls_model=str(ONNX / "ppocr-cls.onnx"), **dict_kw,
                      **ocr_kwargs)
            RESULTS.setdefault("rec_head", {})[label] = ocr.deployments["rec"].head
            RESULTS["ocr"][label] = _passes(label, ocr)
            ocr.close()
            save()
            continue
        rs = {s: runner(be, ONNX / f"{m}{suffix}.onnx", **(extra.get(s, {}) if "det" in extra else extra))
              for s, m in (("det", "ppocrv4-det"), ("cls", "ppocr-cls"), ("rec", "ppocrv4-rec"))}
        ocr = OCR.from_runners(rs["det"], rs["rec"], rs["cls"], **{**dict_kw, **ocr_kwargs})
        RESULTS["ocr"][label] = _passes(label, ocr)
        for r in rs.values():
            r.close()
        save()


# ------------------------------------------------------------------------------------------------ server

def binary_v2(model: str, arr: np.ndarray, outputs: list[str]):
    """KServe v2 request with binary input and outputs: JSON of 27k input floats (or rec's 530k output floats)
    would turn the run into a JSON codec benchmark."""
    from ppdeploy.bench.load import RequestTemplate

    header = json.dumps({"inputs": [{"name": "x", "shape": list(arr.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": arr.nbytes}}],
                         "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}).encode()
    return RequestTemplate("POST", f"/v2/models/{model}/infer", header + arr.tobytes(),
                           {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
                           describe=f"v2 binary infer {model} x{list(arr.shape)}")


def start_server(model: Path, name: str, port: int, max_batch: int, delay_ms: float, shape: tuple[int, ...]) -> subprocess.Popen:
    """`ppdeploy serve --repo` with one model. The config declares the input profile (so the GPU runner warms every
    batch bucket before the model reports ready) and turns off running batches on the event loop (inline_max_ms 0):
    a batch whose shape is new to the GPU can take a second, and on the loop it would stall every connection."""
    import yaml

    repo = Path(tempfile.mkdtemp()) / "repo"
    (repo / name).mkdir(parents=True)
    top = max_batch
    cfg = {"name": name, "source": str(model), "backends": [SERVER_BACKEND], "max_batch_size": max_batch,
           "inputs": {"x": {"min": [1, *shape], "opt": [top, *shape], "max": [top, *shape]}},
           "dynamic_batching": {"max_queue_delay_ms": delay_ms, "max_queue_size": 4096, "inline_max_ms": 0}}
    (repo / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "ppdeploy", "serve", "--repo", str(repo), "--port", str(port), "--no-access-log"]
    log = open(OUT / f"server_{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {name} exited: {(OUT / f'server_{name}.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}/ready", timeout=2).status_code == 200:
                return proc
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server {name} not ready in 180 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def raw_runner(model: Path, batches: list[int], shape: tuple[int, ...]) -> list[dict]:
    """The runner alone at each batch size: the ceiling the server is compared with."""
    r = runner(OnnxRuntimeCUDABackend() if SERVER_BACKEND == "onnxruntime-cuda" else OnnxRuntimeBackend(), model)
    rows = []
    for b in batches:
        x = np.random.default_rng(b).uniform(-1, 1, (b, *shape)).astype(np.float32)
        for _ in range(10):
            r.infer(x)
        lat = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.5:
            t = time.perf_counter()
            r.infer(x)
            lat.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(lat)
        rows.append({"batch": b, "median_ms": med, "p99_ms": float(np.percentile(lat, 99)), "items_per_s": b / med * 1e3})
    r.close()
    return rows


def serve_load(model_key: str, shape: tuple[int, ...], b1_rates: list[float], batched_rates: list[float],
               max_batch: int, delay_ms: float, duration: float) -> None:
    from ppdeploy.bench.load import LoadSettings, run_load

    model = ONNX / f"{model_key}.onnx"
    entry = RESULTS["server"].setdefault(model_key, {})
    entry["raw_runner"] = raw_runner(model, [1, 2, 4, 8, 16, 32, max_batch], shape)
    print(model_key, "raw", [(r["batch"], round(r["items_per_s"])) for r in entry["raw_runner"]], flush=True)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    settings = LoadSettings(timeout_s=10, drain_s=10, max_in_flight=1024)
    for label, mb, rates, port in (("batch1", 1, b1_rates, 8101), ("batched", max_batch, batched_rates, 8102)):
        proc = start_server(model, label, port, mb, delay_ms if mb > 1 else 0.0, shape)
        try:
            rows = []

            def show(res):
                lat = res.latency_ms or {}
                print(f"{model_key} {label:8s} offered {res.offered_rate:7.0f}/s achieved {res.achieved_rps:7.1f}/s "
                      f"ok {res.ok}/{res.scheduled} 429 {res.http_429} err {res.http_errors + res.failures} "
                      f"p50 {lat.get('p50', float('nan')):.1f} p99 {lat.get('p99', float('nan')):.1f} ms", flush=True)
                rows.append(res.to_dict(with_samples=False))

            import httpx

            meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/{label}", timeout=10).json()
            outputs = [o["name"] for o in meta["outputs"]]
            run_load(f"http://127.0.0.1:{port}", binary_v2(label, x, outputs), rates, duration, "poisson", settings,
                     on_rate=show)

            stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/{label}/stats", timeout=10).json()
            entry[label] = {"max_batch_size": mb, "max_queue_delay_ms": delay_ms if mb > 1 else 0.0,
                            "rates": rows, "stats": stats}
        except Exception as exc:
            entry[label] = {"error": f"{type(exc).__name__}: {exc}"}
            print(model_key, label, "FAILED", exc, flush=True)
        finally:
            stop(proc)
        save()


def main() -> int:
    t0 = time.perf_counter()
    if "--server-only" not in sys.argv:
        ocr_pages()
    if "--smoke" in sys.argv:
        serve_load("ppocr-cls", (3, 48, 192), [20], [40], max_batch=8, delay_ms=2.0, duration=2.0)
    elif "--ocr-only" not in sys.argv:
        serve_load("ppocr-cls", (3, 48, 192), [150, 300, 450, 600], [300, 600, 1200, 1800, 2400],
                   max_batch=64, delay_ms=2.0, duration=5.0)
    RESULTS["total_s"] = time.perf_counter() - t0
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
