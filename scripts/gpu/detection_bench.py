"""Device run (issue 17, "When a device is lent"): PP-YOLOE+-s and ResNet-50 on onnxruntime-cuda, FP32 and FP16,
batch 1 and 32, through ppdeploy's runner (`Runner.infer`: validation, host->device copy, run, device->host copy).

The NMS graph takes batch 1 only (paddle2onnx 2.1.0 fixes its batch dim); for the no-NMS graph the row also times
ppdeploy's host NMS (OpenCV) on the batch's outputs with the same thresholds. Graphs: `make_det_models.py` made them here (ppdeploy's Paddle->ONNX route and FP16 builder) and stripped their
weights to travel; `det_strip.refill` puts seeded values of the same per-tensor mean/std back. Variants per graph:
FP32 (ppdeploy's default: TF32 off), FP32 with TF32, FP16 graph (FP32 I/O); CUDA graphs for fixed-shape graphs
without NMS. For scale (issue 17): PaddleDetection reports PP-YOLOE+-s at 2.80 ms (batch 1) and 472 img/s (batch 32)
with TensorRT FP16 on a T4, without NMS.

  . scripts/gpu/device_env.sh; python3 scripts/gpu/detection_bench.py      # needs .gpu-carry/det (or /tmp copy)
Writes $OUT/detection_bench.json; prints a table last.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from det_strip import boxes_to_nms, refill  # noqa: E402

from ppdeploy.backends.base import BuildOptions  # noqa: E402
from ppdeploy.core.shapes import ShapeProfile  # noqa: E402

OUT = Path(os.environ.get("OUT", "."))
SRC = Path(os.environ.get("DET_MODELS", ".gpu-carry/det"))
SECONDS = float(os.environ.get("DET_SECONDS", 1.5))
BATCHES = [int(b) for b in os.environ.get("DET_BATCHES", "1,32").split(",")]
MODELS = os.environ.get("DET_ONLY", "ppyoloe_nonms,ppyoloe_nms,resnet50").split(",")
BACKEND = os.environ.get("E2E_BACKEND", "onnxruntime-cuda")
RESULTS: dict = {"rows": []}


def save() -> None:
    (OUT / "detection_bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def backend():
    if BACKEND == "onnxruntime-cuda":
        from ppdeploy.backends.onnxruntime_cuda import OnnxRuntimeCUDABackend
        return OnnxRuntimeCUDABackend()
    from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend()


def load(model: Path, shapes: ShapeProfile | None = None, **extra):
    d = Path(tempfile.mkdtemp())
    opts = BuildOptions(extra=extra, shapes=shapes or ShapeProfile())
    be = backend()
    be.build(model, d, opts)
    return be.load(d, opts)


def feeds_for(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "resnet50":
        return {"x": rng.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)}
    return {"image": rng.uniform(0, 1, (batch, 3, 640, 640)).astype(np.float32),
            "scale_factor": np.ones((batch, 2), np.float32)}


def time_runner(runner, feeds: dict) -> dict:
    first = time.perf_counter()
    out = runner.infer(feeds)
    first_ms = (time.perf_counter() - first) * 1e3
    for _ in range(5):
        runner.infer(feeds)
    lat, parts = [], {"h2d": [], "compute": [], "d2h": []}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SECONDS or len(lat) < 10:
        t = time.perf_counter()
        runner.infer(feeds)
        lat.append((time.perf_counter() - t) * 1e3)
        for k in parts:
            if k in runner.last_timings:
                parts[k].append(runner.last_timings[k])
    batch = next(iter(feeds.values())).shape[0]
    med = statistics.median(lat)
    row = {"batch": batch, "first_call_ms": round(first_ms, 1), "median_ms": round(med, 3),
           "p90_ms": round(float(np.percentile(lat, 90)), 3), "img_per_s": round(batch / med * 1e3, 1),
           "calls": len(lat), **{f"{k}_ms": round(statistics.median(v), 3) for k, v in parts.items() if v}}
    return row, out


def host_nms_ms(outputs: dict) -> tuple[float, float]:
    """ppdeploy's host NMS (ppdeploy.tasks.detection.postprocess.host_nms, OpenCV's NMSBoxesBatched) over a no-NMS
    batch with PP-YOLOE+'s infer_cfg.yml settings: (ms for the batch, mean rows kept per image)."""
    from ppdeploy.tasks.detection.postprocess import NMSOptions, host_nms

    boxes, scores = list(outputs.values())[:2]
    opts = NMSOptions(score_threshold=0.01, iou_threshold=0.7, nms_top_k=1000, keep_top_k=300)
    runs, kept = [], []
    for _ in range(3):
        t = time.perf_counter()
        kept = [len(host_nms(boxes[i], scores[i].T, opts)) for i in range(boxes.shape[0])]
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs), float(np.mean(kept))


def main() -> int:
    from ppdeploy.core.device import gpu_info

    RESULTS["gpu"] = gpu_info()
    work = Path(tempfile.mkdtemp())
    for name in MODELS:
        for precision in ("fp32", "fp16"):
            stripped = SRC / f"{name}.{precision}.onnx"
            if not stripped.is_file():
                print("missing", stripped, flush=True)
                continue
            shutil.copy(str(stripped) + ".weights.json", work / f"{stripped.name}.weights.json")
            shutil.copy(stripped, work / stripped.name)
            model = refill(work / stripped.name, work / f"{name}.{precision}.full.onnx", seed=0)
            variants = [("default", {})]
            if precision == "fp32":
                variants.append(("tf32", {"use_tf32": True}))
            for label, extra in variants:
                runner = load(model, **extra)
                for b in ([1] if name == "ppyoloe_nms" else BATCHES):  # paddle2onnx fixes the NMS graph's batch to 1
                    feeds = feeds_for(name, b)
                    try:
                        row, out = time_runner(runner, feeds)
                    except Exception as exc:  # noqa: BLE001 - recorded and shown
                        row, out = {"batch": b, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}, None
                    row.update(model=name, precision=precision, variant=label)
                    if out is not None and name.startswith("ppyoloe"):
                        row["nms"] = boxes_to_nms(name, list(out.values()))
                        if name.endswith("nonms"):
                            row["nms"] = {"pairs_above_threshold_mean": float(np.mean(row["nms"]["pairs_above_threshold"])),
                                          "max_score": row["nms"]["max_score"]}
                            try:
                                ms, kept = host_nms_ms(out)
                                row["host_nms"] = {"ms_per_batch": round(ms, 2), "kept_per_image": kept,
                                                   "img_per_s_with_host_nms": round(b / (row["median_ms"] + ms) * 1e3, 1)}
                            except Exception as exc:  # noqa: BLE001
                                row["host_nms"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        else:
                            row["nms"] = {"boxes_after_nms_mean": float(np.mean(row["nms"]["boxes_after_nms"]))}
                    RESULTS["rows"].append(row)
                    save()
                    print(f"{name:14s} {precision} {label:8s} bs{b:<3d} {row.get('median_ms', row.get('error'))} ms "
                          f"{row.get('img_per_s', '')} img/s  h2d {row.get('h2d_ms')} compute {row.get('compute_ms')} "
                          f"d2h {row.get('d2h_ms')}  {json.dumps(row.get('nms', ''))} {json.dumps(row.get('host_nms', ''))}",
                          flush=True)
                runner.close()
            if name != "ppyoloe_nms" and BACKEND == "onnxruntime-cuda":  # CUDA graphs need fixed shapes, no NMS
                for b in BATCHES:
                    feeds = feeds_for(name, b)
                    fixed = ShapeProfile.from_dict({n: {"min": a.shape, "opt": a.shape, "max": a.shape}
                                                    for n, a in feeds.items()})
                    try:
                        runner = load(model, shapes=fixed, cuda_graph=True)
                        row, _ = time_runner(runner, feeds)
                        runner.close()
                    except Exception as exc:  # noqa: BLE001
                        row = {"batch": b, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    row.update(model=name, precision=precision, variant="cuda_graph")
                    RESULTS["rows"].append(row)
                    save()
                    print(f"{name:14s} {precision} graph    bs{b:<3d} {row.get('median_ms', row.get('error'))} ms "
                          f"{row.get('img_per_s', '')} img/s", flush=True)
    print("\nmodel          prec variant    batch  median_ms  img/s   compute_ms")
    for r in RESULTS["rows"]:
        print(f"{r['model']:14s} {r['precision']} {r['variant']:10s} {r['batch']:5d}  {r.get('median_ms', 'ERR'):>9}"
              f"  {r.get('img_per_s', ''):>7}  {r.get('compute_ms', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
