"""Runners for judging candidate graphs: the same `Runner` the rest of ppdeploy uses, made without the engine
cache (candidates are throw-away; only the accepted graph is cached, by `apply`).

FP32, FP16 and INT8 candidates run in ONNX Runtime on the CPU (FP16 nodes without a CPU kernel are run by
ORT through inserted casts, so overflow to inf still shows, as it would on a GPU). BF16 is not a graph
but a backend setting, so BF16 candidates run in OpenVINO with INFERENCE_PRECISION_HINT=bf16; NNCF's INT8
IR for OpenVINO runs there too.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ppdeploy.backends.base import BuildOptions, Runner
from ppdeploy.core.errors import BackendUnavailable, BuildError


def ort_runner(onnx_path: Path, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    from ppdeploy.backends.onnxruntime import OnnxRuntimeRunner, session_options

    options = BuildOptions(threads=threads)
    try:
        session = ort.InferenceSession(str(onnx_path), session_options(options), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types; keep its message
        raise BuildError(f"ONNX Runtime could not load the candidate graph {onnx_path}: {str(exc)[:800]}") from exc
    return OnnxRuntimeRunner(session, options)


def openvino_runner(onnx_path: Path, precision: str, threads: int | None = None, extra: dict | None = None) -> Runner:
    from ppdeploy.backends import get_backend
    from ppdeploy.core.device import cpu_supports_bf16

    if precision == "bf16" and not cpu_supports_bf16():
        raise BackendUnavailable("bf16 needs a CPU with avx512_bf16 or AMX; this one has neither",
                                 hint="use --precision fp32 or int8 on this machine")
    backend = get_backend("openvino")
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"bf16 runs through OpenVINO, which is unavailable: {reason}")
    options = BuildOptions(precision=precision, threads=threads, extra=dict(extra or {}))
    with tempfile.TemporaryDirectory(prefix="ppdeploy-gate-") as tmp:
        backend.build(Path(onnx_path), Path(tmp), options)
        return backend.load(Path(tmp), options)


def candidate_runner(onnx_path: Path, backend_hint: str | None = None, threads: int | None = None,
                     extra: dict | None = None) -> Runner:
    """extra: switches for the backend the hint names (only OpenVINO takes any: keep_fp32)."""
    if extra and backend_hint != "bf16":
        raise ValueError(f"backend switches {sorted(extra)} given for a candidate run by "
                         f"{backend_hint or 'onnxruntime'}")
    if backend_hint == "bf16":
        return openvino_runner(onnx_path, "bf16", threads, extra)
    if backend_hint == "openvino":  # OpenVINO-only graphs (NNCF's INT8 IR), run at FP32 precision otherwise
        return openvino_runner(onnx_path, "fp32", threads)
    if backend_hint == "openvino-bf16":  # the same IR, its unquantized ops at BF16
        return openvino_runner(onnx_path, "bf16", threads)
    return ort_runner(onnx_path, threads)
