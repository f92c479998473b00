"""Runners for judging candidate graphs: the same `Runner` the rest of ppdeploy uses, made without the engine
cache (candidates are throw-away; only the accepted graph is cached, by `apply`).

FP32, FP16 and INT8 QDQ candidates run in ONNX Runtime on the CPU (FP16 nodes without a CPU kernel are run by
ORT through inserted casts, so overflow to inf still shows, as it would on a GPU). What ONNX Runtime cannot judge
runs on the CPU backend that declares it can (`Backend.precisions`, `Backend.formats`): BF16, a backend setting
rather than a graph, and graphs in another format (NNCF's INT8 IR), at the precision their quantizer runs them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ppdeploy.backends.base import BuildOptions, Runner
from ppdeploy.backends.onnxruntime import OnnxRuntimeRunner, session_options
from ppdeploy.backends.registry import BACKENDS, get_backend
from ppdeploy.core.errors import BackendUnavailable, BuildError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.precision.registry import QUANTIZERS

ort = lazy_import("onnxruntime", install="onnxruntime")


def ort_runner(onnx_path: Path, threads: int | None = None) -> Runner:
    options = BuildOptions(threads=threads)
    try:
        session = ort.InferenceSession(str(onnx_path), session_options(options), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types; keep its message
        raise BuildError(f"ONNX Runtime could not load the candidate graph {onnx_path}: {str(exc)[:800]}") from exc
    return OnnxRuntimeRunner(session, options)


def backend_runner(model_path: Path, precision: str, fmt: str = "onnx", threads: int | None = None,
                   extra: dict | None = None) -> Runner:
    """`model_path` (of artifact format `fmt`) built at `precision` by the first registered CPU backend that runs
    both and can run here; BackendUnavailable saying why none can."""
    names = BACKENDS.where(lambda cls: cls.device == "cpu" and fmt in cls.formats and precision in cls.precisions)
    reasons = []
    for name in names:
        backend = get_backend(name)
        reason = backend.unavailable_reason() or backend.precision_unavailable(precision)
        if reason:
            reasons.append(f"{name}: {reason}")
            continue
        options = BuildOptions(precision=precision, threads=threads, extra=dict(extra or {}))
        with tempfile.TemporaryDirectory(prefix="ppdeploy-gate-") as tmp:
            backend.build(Path(model_path), Path(tmp), options)
            return backend.load(Path(tmp), options)
    if not names:
        raise BackendUnavailable(f"no CPU backend runs {fmt} graphs at {precision}")
    raise BackendUnavailable(f"{precision} ({fmt}) cannot run here: {'; '.join(reasons)}",
                             hint="use --precision fp32 or int8 on this machine" if precision == "bf16" else None)


def candidate_runner(onnx_path: Path, backend_hint: str | None = None, threads: int | None = None,
                     extra: dict | None = None) -> Runner:
    """backend_hint: None (a graph ONNX Runtime judges), "bf16" (the graph at BF16), or the name of the quantizer
    that wrote the graph (run in its format at its run precision). extra: switches for that backend (keep_fp32)."""
    quantizer = QUANTIZERS.get(backend_hint) if backend_hint not in (None, "bf16") else None
    if extra and backend_hint != "bf16" and (quantizer is None or quantizer.run_precision != "bf16"):
        raise ValueError(f"backend switches {sorted(extra)} given for a candidate run by "
                         f"{backend_hint or 'onnxruntime'}")
    if backend_hint is None:
        return ort_runner(onnx_path, threads)
    if backend_hint == "bf16":
        return backend_runner(onnx_path, "bf16", "onnx", threads, extra)
    return backend_runner(onnx_path, quantizer.run_precision, quantizer.format, threads, extra)
