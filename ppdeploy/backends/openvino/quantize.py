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

VERSION = 3  # 2: quantizes the graph with the FP32 engine's CPU rewrites (rewritten_for_cpu); 3: excludes every op
LIBRARIES = ("nncf", "openvino")  # distributions whose version enters the INT8 cache key
METHODS = ("minmax", "percentile")  # NNCF's min-max and quantile activation range estimators
QUANT_OP_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
# Ops that are never excluded (nothing to quantize in them). Every other op may get a FakeQuantize on its inputs from
# NNCF: not only the compute ops but also Add, Multiply, Interpolate, Concat, ReduceMean... (measured on PP-OCRv4 det
# and the PCB detector), so an exclusion that names only compute ops leaves INT8 inputs behind (the PCB detector kept
# losing 6 mAP points with every compute op excluded). Exclusions therefore name every op.
NOT_IGNORABLE = frozenset({"Parameter", "Constant", "Result"})
SENSITIVITY_SUBSET = 8  # calibration samples per sensitivity run (each run re-collects statistics)


def available() -> str | None:
    """None when NNCF and OpenVINO are importable, else why not."""
    import importlib.util

    for name in ("nncf", "openvino"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install {name}, or {install_hint(name)})"
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
    """(candidate writer, excludable op names) — the same contract as precision's `int8.ort_candidates`; the names
    are every op that holds a computation (NOT_IGNORABLE), so excluding all of them gives the FP32 model.
    `samples`: the calibration feeds, {input name: array} each."""
    reason = available()
    if reason:
        raise BackendUnavailable(f"INT8 for OpenVINO needs NNCF: {reason}")
    import nncf
    import openvino as ov

    core = ov.Core()
    onnx_path = rewritten_for_cpu(onnx_path, work)
    try:
        base = core.read_model(str(onnx_path))
    except Exception as exc:
        raise ConversionError(f"OpenVINO could not read {onnx_path}: {str(exc)[:500]}") from exc
    names = [op.get_friendly_name() for op in base.get_ordered_ops() if op.get_type_name() not in NOT_IGNORABLE]
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
        ov.save_model(quantized, str(out), compress_to_fp16=False)  # what stays float stays FP32, weights included
        log.info("int8/openvino: candidate %d (%d ignored, %d samples)", counter[0], len(ignored), len(used))
        return out

    return candidate, names


def rewritten_for_cpu(onnx_path: Path, work: Path) -> Path:
    """The graph NNCF quantizes: `onnx_path` with the rewrites the OpenVINO backend applies to its FP32 engines
    (ppdeploy.graph.deconv: a kernel == stride ConvTranspose as a 1x1 Conv + DepthToSpace, which the CPU plugin runs
    better and which INT8 then covers too), so the INT8 engine replaces the FP32 engine it is compared with. The
    rewrite leaves the encoder's node names as they are (it touches the upsampling tail only)."""
    import onnx

    from ppdeploy.graph import deconv

    if Path(onnx_path).suffix != ".onnx":
        return Path(onnx_path)
    model = onnx.load(str(onnx_path))
    if not deconv.deconv_as_depth_to_space(model):
        return Path(onnx_path)
    out = work / f"rewritten-{Path(onnx_path).name}"
    onnx.save(model, str(out))
    return out


def region_nodes(onnx_path: Path, keep_regions: Sequence[str]) -> list[str]:
    """Names of the ops of the `keep_regions` (ppdeploy.graph.regions) in the OpenVINO model read from `onnx_path`,
    the names NNCF's ignored scope takes: every op of the region (NOT_IGNORABLE), so none of its inputs is INT8."""
    import openvino as ov

    from ppdeploy.backends.openvino.mixed import encoder_ops
    from ppdeploy.graph import regions

    model = ov.Core().read_model(str(onnx_path))
    names: list[str] = []
    for region in regions.split_keep(keep_regions)[0]:
        found = [op.get_friendly_name() for op in encoder_ops(model) if op.get_type_name() not in NOT_IGNORABLE]
        if not found:
            raise regions.no_region_error(region, str(onnx_path))
        names += [n for n in found if n not in names]
    return names


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
