"""INT8 for OpenVINO: NNCF post-training quantization of the OpenVINO model, on the same calibration data and
behind the same gate and exclusion search as the ONNX Runtime path.

Why a second quantizer: where Q/DQ pairs sit decides what an engine can fuse. ONNX Runtime's QDQ graph
(quantized outputs, FP32 element-wise ops between) runs *slower* than FP32 in OpenVINO here, and NNCF's
ONNX export ran PP-OCRv4 det wrongly in OpenVINO; NNCF quantizing the OpenVINO model itself places
FakeQuantize where OpenVINO's CPU plugin fuses it (several times faster than OpenVINO FP32: BENCHMARKS.md) and
applies bias correction. The result is an OpenVINO IR (`model.xml` + `model.bin`), which only the
openvino backend builds from; the precision cache and the gate treat it like any other graph.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import BackendUnavailable, ConversionError, InputError
from ppdeploy.core.lazy import install_hint

log = logging.getLogger("ppdeploy.precision.build")

METHODS = ("minmax", "percentile")  # NNCF's min-max and quantile activation range estimators
QUANT_OP_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
SENSITIVITY_SUBSET = 8  # calibration samples per sensitivity run (each run re-collects statistics)


def available() -> str | None:
    """None when NNCF and OpenVINO are importable, else why not."""
    import importlib.util

    for name in ("nncf", "openvino"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed ({install_hint(name)})"
    return None


def _advanced(method: str):
    if method not in METHODS:
        raise InputError(f"calibration method '{method}' is not offered by NNCF", hint=f"choose from {', '.join(METHODS)}")
    if method == "minmax":
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.QUANTILE)


def candidates(onnx_path: Path, samples: Sequence[Mapping[str, np.ndarray]], method: str,
               work: Path) -> tuple[Callable, list[str]]:
    """(candidate writer, quantizable op names) — the same contract as precision's `int8.ort_candidates`.
    `samples`: the calibration feeds, {input name: array} each."""
    reason = available()
    if reason:
        raise BackendUnavailable(f"INT8 for OpenVINO needs NNCF: {reason}")
    import nncf
    import openvino as ov

    core = ov.Core()
    try:
        base = core.read_model(str(onnx_path))
    except Exception as exc:
        raise ConversionError(f"OpenVINO could not read {onnx_path}: {str(exc)[:500]}") from exc
    names = [op.get_friendly_name() for op in base.get_ordered_ops() if op.get_type_name() in QUANT_OP_TYPES]
    advanced = _advanced(method)
    counter = [0]

    def candidate(excluded: Sequence[str], only: Sequence[str] | None) -> Path:
        counter[0] += 1
        ignored = list(excluded) if only is None else [n for n in names if n not in set(only)]
        used = list(samples) if only is None else list(samples)[:SENSITIVITY_SUBSET]
        kwargs = {"ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)} if ignored else {}
        if advanced is not None:
            kwargs["advanced_parameters"] = advanced
        try:  # NNCF draws its own progress bars (statistics collection, bias correction)
            quantized = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(used),
                                      subset_size=len(used), fast_bias_correction=True, **kwargs)
        except Exception as exc:
            raise ConversionError(f"NNCF quantization failed: {str(exc)[:500]}") from exc
        out = work / f"int8-ov-candidate-{counter[0]}.xml"
        ov.save_model(quantized, str(out))
        log.info("int8/openvino: candidate %d (%d ignored, %d samples)", counter[0], len(ignored), len(used))
        return out

    return candidate, names


def copy_ir(src: Path, target_xml: Path) -> Path:
    import shutil

    shutil.copyfile(src, target_xml)
    shutil.copyfile(src.with_suffix(".bin"), target_xml.with_suffix(".bin"))
    return target_xml


def int8_fraction(xml: Path) -> dict:
    """Compute ops fed by a FakeQuantize (directly or through a weight Convert/Multiply chain) in an IR."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    total = quantized = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in QUANT_OP_TYPES:
            continue
        total += 1
        src = op.input_value(0).get_node()
        if src.get_type_name() == "FakeQuantize":
            quantized += 1
    return {"compute_nodes": total, "int8_nodes": quantized}
