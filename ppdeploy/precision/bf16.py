"""BF16: not a graph rewrite but the backend's inference precision (OpenVINO's INFERENCE_PRECISION_HINT on CPUs with
avx512_bf16/AMX). The graph stays the FP32 one; the gate runs it at BF16, with any region kept FP32 by the backend."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ppdeploy.precision.gate import GateReport

LIBRARIES = ("openvino",)  # distributions whose version enters the cache key (they run the gate)


def build(onnx_path: Path, make_gates: Callable, keep_fp32: Sequence[str]) -> dict:
    """The precision record of a gated BF16 build; AccuracyError (with the gate report) when it fails."""
    keep = sorted(set(keep_fp32))
    gate, _ = make_gates(onnx_path)
    report: GateReport = gate.evaluate(onnx_path, backend_hint="bf16",
                                       backend_extra={"keep_fp32": keep} if keep else None)
    if not report.passed:
        raise report.error("BF16 (OpenVINO inference precision) fails its accuracy gate",
                           hint="use --precision fp32, keep_fp32=['encoder'], or raise --max-loss")
    return {"gate": report.to_dict(), "backend_hint": "bf16", "kept_fp32": keep}
