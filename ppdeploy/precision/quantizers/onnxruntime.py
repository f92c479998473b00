"""INT8 as ONNX Runtime's QDQ graph (precision/int8.py): explicit Q/DQ pairs that ONNX Runtime, TensorRT and
OpenVINO all run as INT8, calibration ranges cached by data hash."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from ppdeploy.precision import int8
from ppdeploy.precision.quantizer import Quantizer

GRAPH = "model.onnx"


def _candidates(onnx_path: Path, calib, method: str, cache, work: Path):
    prepared = int8.prepare(onnx_path, work / "prepared.onnx")
    ranges, hit = int8.calibrate(prepared, calib, method, cache)
    candidate, quantizable = int8.ort_candidates(prepared, ranges, method, work)
    return candidate, quantizable, hit


def _save(accepted: Path, out: Path):
    target = out / GRAPH
    shutil.copyfile(accepted, target)
    return target, int8.quantized_fraction(target)


def _region_nodes(onnx_path: Path, work: Path, keep_regions) -> list[str]:
    return int8.onnx_region_nodes(work / "prepared.onnx", keep_regions)


def _unavailable() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed (pip install onnxruntime)"


QUANTIZER = Quantizer("onnxruntime", "onnx", _candidates, _save, _unavailable, _region_nodes, methods=int8.METHODS)
