"""Device run: what a *new* input shape costs on ONNX Runtime CUDA, per cuDNN algorithm-search mode, and whether
shapes seen before are served from ORT's cache. OCR feeds a different det size per page and a different rec width
per batch, so this, not the fixed-shape sweep, decides OCR speed on the GPU. Writes $OUT/shape_probe.json."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.onnxruntime_cuda import OnnxRuntimeCUDABackend
from ppdeploy.core.device import gpu_info

ONNX = Path(os.environ["PPDEPLOY_TEST_ONNX_DIR"])
OUT = Path(os.environ.get("OUT", "."))
CASES = {
    "ppocr-cls": [(n, 3, 48, 192) for n in (1, 2, 3, 4, 5, 6)],
    "ppocrv4-rec": [(6, 3, 48, w) for w in (160, 256, 320, 448, 640, 960)],
    "ppocrv4-det": [(1, 3, h, w) for h, w in ((640, 480), (736, 544), (960, 704), (512, 960), (960, 960), (800, 608))],
}


def main() -> None:
    out = {"gpu": gpu_info(), "rows": []}
    for algo in ("HEURISTIC", "DEFAULT", "EXHAUSTIVE"):
        for model, shapes in CASES.items():
            d = Path(tempfile.mkdtemp())
            be = OnnxRuntimeCUDABackend()
            opts = BuildOptions(extra={"conv_algo_search": algo})
            be.build(ONNX / f"{model}.onnx", d, opts)
            r = be.load(d, opts)
            xs = [np.random.default_rng(i).uniform(-1, 1, s).astype(np.float32) for i, s in enumerate(shapes)]
            cycles = []
            for _ in range(4):  # cycle 0: every shape new; cycles 1-3: every shape seen before
                times = []
                for x in xs:
                    t = time.perf_counter()
                    r.infer(x)
                    times.append((time.perf_counter() - t) * 1e3)
                cycles.append(times)
            same = []
            for _ in range(20):
                t = time.perf_counter()
                r.infer(xs[0])
                same.append((time.perf_counter() - t) * 1e3)
            row = {"algo": algo, "model": model, "first_ms": cycles[0],
                   "revisit_median_ms": statistics.median([t for c in cycles[1:] for t in c]),
                   "revisit_max_ms": max(t for c in cycles[1:] for t in c),
                   "same_shape_median_ms": statistics.median(same)}
            out["rows"].append(row)
            print(f"{algo:10s} {model:12s} first {statistics.mean(row['first_ms']):8.1f} ms/shape  "
                  f"revisit median {row['revisit_median_ms']:7.2f} max {row['revisit_max_ms']:7.2f}  "
                  f"same-shape {row['same_shape_median_ms']:6.2f}", flush=True)
            r.close()
            (OUT / "shape_probe.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
