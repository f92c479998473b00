"""Device run: try the TensorRT-RTX runtime once on this GPU and record exactly what happens.

Builds the cls engine with ppdeploy's TensorRT-RTX backend (build works without a usable GPU), then asks the
runtime for the engine's validity and tries ppdeploy's loader + one inference. Writes $OUT/rtx_probe.json.
"""
from __future__ import annotations

import json
import os
import tempfile
import traceback
from pathlib import Path

import numpy as np

from ppdeploy.backends import get_backend
from ppdeploy.backends import tensorrt as trtmod
from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.device import gpu_info
from ppdeploy.core.shapes import ShapeProfile

OUT = Path(os.environ.get("OUT", "."))
onnx_path = Path(os.environ["PPDEPLOY_TEST_ONNX_DIR"]) / "ppocr-cls.onnx"
report: dict = {"gpu": gpu_info()}
be = get_backend("tensorrt-rtx")
report["unavailable_reason"] = be.unavailable_reason()
shapes = ShapeProfile.from_dict({"x": {"min": [1, 3, 48, 192], "opt": [8, 3, 48, 192], "max": [32, 3, 48, 192]}})
opts = BuildOptions(shapes=shapes)
art = Path(tempfile.mkdtemp())
try:
    be.build(onnx_path, art, opts)
    report["build"] = {k: v for k, v in trtmod.read_meta(art).items() if k in ("version", "build_s", "engine_bytes")}
except Exception as exc:
    report["build_error"] = f"{type(exc).__name__}: {exc}"

messages: list = []
try:
    import tensorrt_rtx_bindings as trt

    class Rec(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            messages.append(f"[{str(severity).split('.')[-1]}] {msg}")

    logger = Rec()
    runtime = trt.Runtime(logger)
    blob = (art / trtmod.ENGINE_FILE).read_bytes()
    validity, diagnostics = runtime.get_engine_validity(blob)
    report["engine_validity"] = {"validity": str(validity), "diagnostics": str(diagnostics)}
    engine = runtime.deserialize_cuda_engine(blob)
    report["raw_deserialize"] = "ok" if engine is not None else "returned None"
except Exception as exc:
    report["raw_runtime_exception"] = f"{type(exc).__name__}: {exc}"
report["raw_runtime_log"] = messages[-12:]

try:
    runner = be.load(art, opts)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    out = runner.infer(x)
    report["ppdeploy_load"] = {"ok": True, "timings": runner.last_timings,
                               "outputs": {k: list(v.shape) for k, v in out.items()}}
except Exception as exc:
    report["ppdeploy_load"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                               "traceback_tail": traceback.format_exc().splitlines()[-4:]}
print(json.dumps(report, indent=1))
(OUT / "rtx_probe.json").write_text(json.dumps(report, indent=1))
