"""Device run: parity of the OCR models on ONNX Runtime CUDA against the CPU reference, and a batch-size sweep for
det / rec / cls in FP32 and FP16, through ppdeploy's own OnnxRuntimeCUDARunner (IO binding, timings per stage).

Run on the device after `. scripts/gpu/device_env.sh` (models come from PPDEPLOY_TEST_ONNX_DIR, i.e.
.gpu-carry/onnx made by scripts/gpu/prepare_carry.py). Writes $OUT/ort_cuda.json; render it here with
scripts/gpu/report.py.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend
from ppdeploy.backends.onnxruntime_cuda import CudaSettings, OnnxRuntimeCUDABackend
from ppdeploy.core.device import gpu_info
from ppdeploy.core.shapes import ShapeProfile

ONNX_DIR = Path(os.environ["PPDEPLOY_TEST_ONNX_DIR"])
OUT = Path(os.environ.get("OUT", "."))
SHAPES = {"ppocrv4-det": (3, 640, 640), "ppocrv4-rec": (3, 48, 320), "ppocr-cls": (3, 48, 192)}
BATCHES = {"ppocrv4-det": [1, 2, 4, 8, 16], "ppocrv4-rec": [1, 2, 4, 8, 16, 32, 64, 128],
           "ppocr-cls": [1, 8, 32, 128]}
GRAPH_BATCHES = {"ppocrv4-det": [1, 8], "ppocrv4-rec": [1, 32], "ppocr-cls": [1, 32]}


def load(backend, model: Path, **extra):
    d = Path(tempfile.mkdtemp())
    shapes = extra.pop("_shapes", ShapeProfile())
    opts = BuildOptions(extra=extra, shapes=shapes)
    backend.build(model, d, opts)
    return backend.load(d, opts)


def inputs(name: str, batch: int, seed: int) -> np.ndarray:
    """Image-like values (normalised pixels around 0, std ~1), not zeros: zeros hide wrong indexing."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, *SHAPES[name])).astype(np.float32)


def diff(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        d = np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))
        ref = np.abs(b[k].astype(np.float64))
        out[k] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                  "rel_l2": float(np.linalg.norm(d) / max(np.linalg.norm(ref), 1e-30)),
                  "finite": bool(np.isfinite(a[k]).all())}
        if a[k].ndim == 3:  # rec: (N, T, classes) -> greedy CTC path agreement
            out[k]["argmax_agree"] = float((a[k].argmax(-1) == b[k].argmax(-1)).mean())
        if a[k].ndim == 2:  # cls: (N, 2)
            out[k]["argmax_agree"] = float((a[k].argmax(-1) == b[k].argmax(-1)).mean())
    return out


def parity(results: dict) -> None:
    cpu, cuda = OnnxRuntimeBackend(), OnnxRuntimeCUDABackend()
    for name in SHAPES:
        batch = 1 if name == "ppocrv4-det" else 8
        xs = [inputs(name, batch, s) for s in (11, 12)]
        ref_runner = load(cpu, ONNX_DIR / f"{name}.onnx")
        refs = [ref_runner.infer(x) for x in xs]
        entry = {}
        for label, model, extra in [("fp32_tf32_off", f"{name}.onnx", {}),
                                    ("fp32_tf32_on", f"{name}.onnx", {"use_tf32": True}),
                                    ("fp16_tf32_off", f"{name}.fp16.onnx", {})]:
            try:
                runner = load(cuda, ONNX_DIR / model, **extra)
            except Exception as exc:
                entry[label] = {"error": str(exc)[:400]}
                continue
            worst: dict = {}
            for x, ref in zip(xs, refs):
                for k, v in diff(runner.infer(x), ref).items():
                    w = worst.setdefault(k, v)
                    for m in v:
                        if m in ("argmax_agree",):
                            w[m] = min(w[m], v[m])
                        elif m == "finite":
                            w[m] = w[m] and v[m]
                        else:
                            w[m] = max(w[m], v[m])
            entry[label] = worst
            runner.close()
        results["parity"][name] = {"batch": batch, **entry}
        print(name, json.dumps(entry)[:400], flush=True)


def time_runner(runner, x: np.ndarray, min_iters: int = 20, min_s: float = 1.0) -> dict:
    for _ in range(5):
        runner.infer(x)
    lat, stages = [], {"h2d": [], "compute": [], "d2h": []}
    start = time.perf_counter()
    while len(lat) < min_iters or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        runner.infer(x)
        lat.append((time.perf_counter() - t) * 1e3)
        for k in stages:
            stages[k].append(runner.last_timings.get(k, float("nan")))
        if len(lat) >= 2000:
            break
    med = statistics.median(lat)
    return {"median_ms": med, "p90_ms": float(np.percentile(lat, 90)), "iters": len(lat),
            "items_per_s": x.shape[0] / med * 1e3, **{f"{k}_ms": statistics.median(v) for k, v in stages.items()}}


def sweep(results: dict) -> None:
    cuda = OnnxRuntimeCUDABackend()
    for name in SHAPES:
        for precision, model in (("fp32", f"{name}.onnx"), ("fp16", f"{name}.fp16.onnx")):
            try:
                runner = load(cuda, ONNX_DIR / model)
            except Exception as exc:
                results["sweep"].append({"model": name, "precision": precision, "error": str(exc)[:400]})
                continue
            for b in BATCHES[name]:
                r = time_runner(runner, inputs(name, b, b))
                results["sweep"].append({"model": name, "precision": precision, "batch": b, "cuda_graph": False, **r})
                print(f"{name:12s} {precision} bs{b:<4d} {r['median_ms']:8.3f} ms  {r['items_per_s']:9.1f}/s "
                      f"(h2d {r['h2d_ms']:.3f} compute {r['compute_ms']:.3f} d2h {r['d2h_ms']:.3f})", flush=True)
            runner.close()
            for b in GRAPH_BATCHES[name]:
                shape = [b, *SHAPES[name]]
                fixed = ShapeProfile.from_dict({"x": {"min": shape, "opt": shape, "max": shape}})
                try:
                    runner = load(cuda, ONNX_DIR / model, cuda_graph=True, _shapes=fixed)
                    r = time_runner(runner, inputs(name, b, b))
                    runner.close()
                except Exception as exc:
                    r = {"error": str(exc)[:300]}
                results["sweep"].append({"model": name, "precision": precision, "batch": b, "cuda_graph": True, **r})
                print(f"{name:12s} {precision} bs{b:<4d} graph {r.get('median_ms', r.get('error'))}", flush=True)


def conv_algo(results: dict) -> None:
    """HEURISTIC vs EXHAUSTIVE cuDNN algorithm search on the batches where run 1 looked wrong (rec fp32 bs1-4)."""
    cuda = OnnxRuntimeCUDABackend()
    for algo in ("HEURISTIC", "EXHAUSTIVE"):
        runner = load(cuda, ONNX_DIR / "ppocrv4-rec.onnx", conv_algo_search=algo)
        for b in (1, 4, 8):
            r = time_runner(runner, inputs("ppocrv4-rec", b, b))
            results["conv_algo"].append({"model": "ppocrv4-rec", "precision": "fp32", "batch": b, "algo": algo, **r})
            print(f"rec fp32 bs{b} {algo:10s} {r['median_ms']:.3f} ms", flush=True)
        runner.close()


def main() -> int:
    import onnxruntime as ort

    results = {"gpu": gpu_info(), "onnxruntime": ort.__version__, "python": sys.version.split()[0],
               "models": json.loads((ONNX_DIR / "models.json").read_text()) if (ONNX_DIR / "models.json").exists() else {},
               "parity": {}, "sweep": [], "conv_algo": [], "notes": "latency = Runner.infer wall time incl. validation, H2D, run, D2H; "
               "inputs uniform(-1,1); ORT CUDA EP with ppdeploy's defaults ",
               "conv_algo_default": CudaSettings().conv_algo_search}
    t = time.perf_counter()
    parity(results)
    results["parity_s"] = time.perf_counter() - t
    if "--parity-only" not in sys.argv:
        conv_algo(results)
        sweep(results)
    results["total_s"] = time.perf_counter() - t
    (OUT / "ort_cuda.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
