"""INT8 as NNCF's OpenVINO IR (ppdeploy.backends.openvino.quantize): FakeQuantize placed where OpenVINO's CPU plugin
fuses it, which a QDQ graph does not get there; only backends whose formats include "openvino-ir" build from it."""
from __future__ import annotations

from pathlib import Path

from ppdeploy.backends.openvino import quantize as nncf_int8
from ppdeploy.precision.quantizer import Quantizer

FORMAT = "openvino-ir"


def candidates(onnx_path: Path, calib, method: str, cache, work: Path):
    candidate, quantizable = nncf_int8.candidates(onnx_path, calib.samples, method, work)
    return candidate, quantizable, None  # NNCF collects its statistics per candidate: nothing cached


def save(accepted: Path, out: Path):
    target = nncf_int8.copy_ir(accepted, out / "model.xml")
    return target, nncf_int8.int8_fraction(target)


def region_nodes(onnx_path: Path, work: Path, keep_regions) -> list[str]:
    return nncf_int8.region_nodes(onnx_path, keep_regions)


QUANTIZER = Quantizer("openvino", FORMAT, candidates, save, nncf_int8.available, region_nodes,
                      methods=nncf_int8.METHODS, version=nncf_int8.VERSION, libraries=nncf_int8.LIBRARIES)
