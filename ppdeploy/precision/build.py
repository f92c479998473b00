"""Precision at the ONNX level: FP16 and INT8 are graph rewrites, BF16 is a backend setting; every non-FP32
build passes an accuracy gate against the FP32 reference or fails with `AccuracyError` and its report.

    result = apply(onnx_path, "int8", cache=EngineCache(), calib=CalibrationSet.from_npy(dir, ["x"]))
    result.onnx_path   # the graph a backend builds from
    result.report      # gate numbers, what was kept in FP32 / excluded from INT8, calibration facts

The accepted graph is cached (kind "precision") under the ONNX bytes, precision, method, keep/exclude
lists, gate settings and calibration hash, so a second build costs a cache lookup; calibration ranges
are cached separately under (graph, data hash, method), so a new exclusion list does not recalibrate.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

from ppdeploy.core.cache import EngineCache, sha256_file
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.core.errors import BackendUnavailable, InputError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.graph import model as graph
from ppdeploy.graph import regions
from ppdeploy.precision import bf16, fp16, int8
from ppdeploy.precision.calibration import CalibrationSet, synthetic_set
from ppdeploy.precision.gate import GateReport, OutputGate, TaskGate, TaskMetric
from ppdeploy.precision.registry import DEFAULT_QUANTIZER, PRECISIONS, QUANTIZERS

onnx = lazy_import("onnx", install="onnx")

log = logging.getLogger("ppdeploy.precision.build")

METHODS = int8.METHODS
# Default loss budgets, in points of agreement with FP32 (see compare.py), from the PRECISIONS registry: half a point
# for FP16/BF16, one point for INT8. Task gates use the same scale (0.005 = half a point of character accuracy).
DEFAULT_MAX_LOSS = {name: p.max_loss for name, p in PRECISIONS.items() if p.max_loss is not None}
HOLDOUT = 0.25  # share of the calibration data held out for the INT8 gate (never used to calibrate)
GRAPH = "model.onnx"
RECORD = "precision.json"
LIBRARIES = {"fp16": fp16.LIBRARIES, "int8": int8.LIBRARIES, "bf16": bf16.LIBRARIES}


@dataclass
class PrecisionResult:
    onnx_path: Path  # the graph to build from (for fp32/bf16: the input, unchanged)
    precision: str
    kept_fp32: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    calib_hash: str | None = None
    report: dict = field(default_factory=dict)
    backend_hint: str | None = None  # "bf16": the backend must run at bf16 (OpenVINO's INFERENCE_PRECISION_HINT)
    method: str | None = None
    cache_hit: bool = False
    # The artifact format of `onnx_path` ("onnx", or e.g. "openvino-ir" for NNCF's INT8): a backend builds it only
    # when its `formats` include it.
    format: str = "onnx"
    # The precision the backend must run the graph's float ops at, when not its precision's own (NNCF INT8 with
    # the unquantized ops at BF16); not part of the key: backend_hint already says it.
    inference_precision: str | None = None

    def key_parts(self) -> dict[str, Any]:
        return {"precision": self.precision, "method": self.method, "kept_fp32": sorted(self.kept_fp32),
                "excluded": sorted(self.excluded), "calib": self.calib_hash, "backend_hint": self.backend_hint}


def as_calibration(calib: Any, input_names: Sequence[str]) -> CalibrationSet | None:
    """Accept a CalibrationSet, a folder of .npy/.npz files, or a list of feed dicts."""
    if calib is None or isinstance(calib, CalibrationSet):
        return calib
    if isinstance(calib, (str, Path)):
        return CalibrationSet.from_npy(calib, list(input_names))
    if isinstance(calib, (list, tuple)):
        return CalibrationSet.from_arrays(calib)
    raise InputError(f"calibration data of type {type(calib).__name__} is not understood",
                     hint="pass a CalibrationSet, a folder of .npy/.npz files, or a list of {input: array} dicts")


def apply(onnx_path: Path, precision: str, *, cache: EngineCache, calib: CalibrationSet | Any | None = None,
          max_loss: float | None = None, keep_fp32: Sequence[str] = (), method: str | Sequence[str] | None = None,
          exclude: Sequence[str] = (), metric: str = "auto", task_metric: TaskMetric | None = None,
          task_name: str = "task", repair: bool = True, rebuild: bool = False,
          quantizer: str = DEFAULT_QUANTIZER) -> PrecisionResult:
    """Produce the `precision` variant of `onnx_path`, gated against FP32 (see module doc).

    keep_fp32: what stays FP32. FP16: node names (added to the automatic repair's findings) and/or regions; BF16 and
        INT8: regions only (INT8: the region's compute ops are never quantized, and where the quantizer runs the rest
        at BF16 the region also stays FP32 there). The one region is "encoder", everything before the first
        upsampling (graph/regions.py).
    exclude: node names never quantized in INT8 graphs (added to the automatic exclusions).
    metric: output agreement metric for the gate (auto|ctc|top1|mask_iou|rel_l2).
    task_metric: `runner -> score` over a whole task (e.g. OCR character accuracy with this model's runner
        swapped in); when given it is the gate, and the output metric only ranks INT8 exclusions. A `data_hash`
        attribute on it (ocr_char_accuracy sets one) identifies its data in the cache key.
    repair: search for FP32 keeps / INT8 exclusions when the first candidate fails (else fail at once).
    method: INT8 calibration method, or a preference list (the first the quantizer offers); None: its default.
    quantizer: INT8 only, a name in QUANTIZERS (precision/quantizers/): "onnxruntime": ORT's QDQ ONNX graph (ONNX
        Runtime, TensorRT); "openvino": NNCF on the OpenVINO model, an OpenVINO IR only backends with the
        "openvino-ir" format build; "openvino-bf16": the same IR with what NNCF left unquantized run at BF16 (CPUs
        with avx512_bf16/AMX), judged by the gate that way. "auto" is resolved per backend by the caller
        (ppdeploy.deploy.quantizer_for).
    """
    onnx_path = Path(onnx_path)
    precision = PRECISIONS.canonical(precision)  # InputError listing the choices for an unknown one
    if precision == "fp32":
        return PrecisionResult(onnx_path, "fp32")
    quantizer = QUANTIZERS.canonical(quantizer)
    quant = QUANTIZERS.get(quantizer)
    if precision == "int8" and quant.run_precision == "bf16" and not cpu_supports_bf16():
        plain = QUANTIZERS.where(lambda q: q.format == quant.format and q.run_precision == "fp32")
        raise BackendUnavailable(f"quantizer {quantizer} runs the unquantized ops at BF16, which this CPU lacks "
                                 "(no avx512_bf16/AMX)", hint=f"use quantizer {' or '.join(plain) or DEFAULT_QUANTIZER}")
    if precision == "int8" and regions.split_keep(keep_fp32)[1]:
        raise InputError(f"keep_fp32 under INT8 takes a region ({', '.join(regions.REGIONS)}), not node names",
                         hint="INT8 leaves single nodes in float with exclude=[...]")
    if precision == "bf16" and regions.split_keep(keep_fp32)[1]:
        raise InputError(f"keep_fp32 under BF16 takes a region ({', '.join(regions.REGIONS)}), not node names",
                         hint="BF16 is OpenVINO's inference precision, set per op by region: keep_fp32=['encoder']")
    wanted, method = method, quant.method(method)
    if method is None:
        raise InputError(f"calibration method {wanted!r} is not offered by quantizer {quantizer}",
                         hint=f"choose from {', '.join(quant.methods)}")
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist")
    model = graph.load(onnx_path)
    inputs = graph.input_specs(model)
    calib = as_calibration(calib, [name for name, _, _ in inputs])
    if calib is not None:
        calib.check_inputs([name for name, _, _ in inputs])
    if precision == "int8" and calib is None:
        raise InputError("INT8 needs calibration data",
                         hint="pass --calib DIR (images, with the task's preprocessing) or --calib-npy DIR")
    budget = DEFAULT_MAX_LOSS[precision] if max_loss is None else float(max_loss)
    if not 0 <= budget < 1:
        raise InputError(f"max_loss must be in [0, 1) (a drop in agreement/metric points), got {budget}")

    if precision == "int8":
        calib_part, gate_data = calib.split(HOLDOUT)
    else:
        calib_part, gate_data = None, calib if calib is not None else synthetic_set(inputs)

    parts = {
        "onnx": sha256_file(onnx_path), "precision": precision, "method": method if precision == "int8" else None,
        "quantizer": quantizer if precision == "int8" else None,
        "keep_fp32": sorted(keep_fp32), "exclude": sorted(exclude), "calib": calib.hash if calib else None,
        "regions": regions.VERSION if regions.split_keep(keep_fp32)[0] else None,
        "gate": {"max_loss": budget, "metric": metric, "task": task_name if task_metric else None,
                 "task_data": getattr(task_metric, "data_hash", None), "data": gate_data.hash, "repair": repair},
        "versions": _versions(precision),
    }
    if precision == "int8":  # what the quantizer does, and the libraries it does it with
        parts["quantizer_version"] = quant.version
        parts["versions"].update(_library_versions(quant.libraries))

    def make_gates(reference: Path) -> tuple[Any, OutputGate]:
        outputs = OutputGate(reference, gate_data, budget, metric)
        if task_metric is None:
            return outputs, outputs
        return TaskGate(reference, task_metric, budget, name=task_name), outputs

    def build(out: Path) -> None:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="ppdeploy-precision-") as tmp:
            work = Path(tmp)
            record: dict[str, Any] = {"precision": precision, "max_loss": budget}
            if precision == "fp16":
                record.update(_build_fp16(model, onnx_path, make_gates, work, out / GRAPH, keep_fp32, repair))
            elif precision == "int8":
                record.update(_build_int8(onnx_path, calib_part, method, cache, make_gates, work, out,
                                          exclude, repair, quant, regions.split_keep(keep_fp32)[0]))
            else:
                record.update(bf16.build(onnx_path, make_gates, keep_fp32))
        record["data"] = {"gate": task_name if task_metric else gate_data.source,
                          "gate_samples": None if task_metric else len(gate_data),
                          "calibration": calib_part.source if calib_part else None,
                          "calibration_samples": len(calib_part) if calib_part else 0,
                          "calib_hash": calib.hash if calib else None}
        record["seconds"] = round(time.perf_counter() - start, 2)
        (out / RECORD).write_text(json.dumps(record, indent=2, default=str))

    entry = cache.get_or_build("precision", parts, build, label=f"{onnx_path.name} {precision}", rebuild=rebuild)
    record = json.loads((entry.path / RECORD).read_text())
    record["cache_hit"] = entry.hit
    graph_path = entry.path / record["graph"] if record.get("graph") else onnx_path
    fmt, inference_precision, hint = "onnx", None, "bf16" if precision == "bf16" else None
    if precision == "int8":
        used = QUANTIZERS.get(record.get("quantizer") or DEFAULT_QUANTIZER)
        fmt, hint = used.format, used.gate_hint
        inference_precision = used.run_precision if used.run_precision != "fp32" else None
    return PrecisionResult(graph_path, precision, record.get("kept_fp32", []), record.get("excluded", []),
                           calib.hash if calib else None, record, hint, method if precision == "int8" else None,
                           entry.hit, fmt, inference_precision)


def _save(model, path: Path) -> Path:
    if model.ByteSize() > 1_800_000_000:  # protobuf's 2 GB limit: weights go to a side file
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))
    return path


def _build_fp16(model, onnx_path, make_gates, work, target, keep_fp32, repair) -> dict:
    graph.name_nodes(model)  # keep lists need names; naming does not change the computation
    keep_nodes = regions.expand_onnx(model, keep_fp32, str(onnx_path))
    gate, outputs = make_gates(onnx_path)
    result = fp16.build(model, gate, _save, work, keep_nodes=keep_nodes, repair=repair)
    _save(result.model, target)
    fp16.smoke_run(target, gate_sample(outputs))
    return {"graph": target.name, "gate": result.report.to_dict(), "kept_fp32": result.kept_fp32,
            "keep_ops": fp16.default_keep_ops(), "search": {"evaluations": len(result.tried), "tried": result.tried}}


def gate_sample(gate) -> dict:
    samples = getattr(gate, "samples", None)
    if samples is None:
        raise RuntimeError("gate without samples")
    return samples.samples[0]


def _build_int8(onnx_path, calib_part, method, cache, make_gates, work, out, exclude, repair, quant,
                keep_regions=()) -> dict:
    gate, proxy = make_gates(onnx_path)
    candidate, quantizable, hit = quant.candidates(onnx_path, calib_part, method, cache, work)
    kept: list[str] = []
    if keep_regions:  # the region's compute ops are never quantized: excluded up front, outside the search's pool
        kept = quant.region_nodes(onnx_path, work, keep_regions)
        quantizable = [n for n in quantizable if n not in set(kept)]
    # Where the quantizer runs the unquantized ops at BF16, the kept regions stay FP32 there too, in the gate as in
    # the engine (ppdeploy.deploy.prepared passes them on to the backend).
    extra = {"keep_fp32": list(keep_regions)} if keep_regions and quant.run_precision == "bf16" else None
    result = int8.search(candidate, quantizable, gate, proxy, exclude=[*exclude, *kept], auto_exclude=repair,
                         backend_hint=quant.gate_hint, backend_extra=extra)
    target, fraction = quant.save(result.path, out)
    return {"graph": target.name, "gate": result.report.to_dict(),
            "excluded": [n for n in result.excluded if n not in set(kept)], "method": method,
            "quantizer": quant.name, "calibration_cache_hit": hit, "int8": fraction,
            "kept_fp32": sorted(keep_regions), "kept_nodes": len(kept),
            "search": {"evaluations": result.evaluations, "sensitivity": result.sensitivity}}


def _versions(precision: str) -> dict[str, str]:
    return _library_versions(LIBRARIES[precision])


def _library_versions(names) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


__all__ = ["apply", "PrecisionResult", "CalibrationSet", "GateReport", "OutputGate", "TaskGate", "TaskMetric",
           "METHODS", "DEFAULT_MAX_LOSS"]
