"""Never silently slower: a reduced-precision engine is timed against the FP32 engine of the same backend, and the
figure is kept with the engine and said out loud when the engine does not pay.

When `load_model` builds an FP16/BF16/INT8 engine (or loads a cached one with no figure yet), it times that engine and
the FP32 engine of the same backend, built through the same cache, on the trial input (the profile's opt shape, else
the model's example shape), interleaved so load from other processes hits both alike, and records the ratio in the
engine's cache entry (`EngineCache.annotate`, note SPEED_NOTE). Every later load reads it from there. A ratio below
NOT_FASTER is logged as a warning with the figure and the likely cause, so `OCR(...)`, `ppdeploy build` and `serve`,
which all load through `load_model`, say it.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Mapping

import numpy as np

from ppdeploy.backends.base import Runner

SPEED_NOTE = "speed_vs_fp32"
CALLS = 5  # timed calls per engine, after one warm-up call each
# A reduced-precision engine less than 5 % faster than FP32 is "not faster": within the noise of a few calls.
NOT_FASTER = 1.05


def measure(fast: Runner, fp32: Runner, feeds: Mapping[str, np.ndarray], calls: int = CALLS) -> dict[str, Any]:
    """{"ratio": FP32 time / this engine's time (above 1: faster), "ms", "fp32_ms", "calls", "input"}: medians of
    `calls` interleaved calls of each runner on `feeds`."""
    for runner in (fast, fp32):
        runner.infer(dict(feeds))
    times: dict[str, list[float]] = {"fast": [], "fp32": []}
    for _ in range(calls):
        for name, runner in (("fast", fast), ("fp32", fp32)):
            start = time.perf_counter()
            runner.infer(dict(feeds))
            times[name].append((time.perf_counter() - start) * 1e3)
    ms, fp32_ms = statistics.median(times["fast"]), statistics.median(times["fp32"])
    return {"ratio": round(fp32_ms / ms, 3) if ms > 0 else None, "ms": round(ms, 3), "fp32_ms": round(fp32_ms, 3),
            "calls": calls, "input": {k: list(v.shape) for k, v in feeds.items()}}


def likely_cause(precision: str, device: str, quantizer: str | None, native_quantizer: str | None,
                 flags: set[str]) -> str:
    """Why an engine at `precision` may not beat FP32 on this backend (`device` "cpu"/"gpu", the quantizer that
    wrote its graph, the backend's own quantizer, this CPU's flags)."""
    if precision == "int8":
        if quantizer and native_quantizer and quantizer != native_quantizer:
            return (f"its graph comes from the {quantizer} quantizer, not this backend's own ({native_quantizer}), "
                    "so the engine does not fuse its quantization")
        if device == "cpu" and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return "this CPU has no VNNI/AMX INT8 instructions"
        return ("the model (or the input) is small: converting activations to and from INT8 costs more than the "
                "INT8 arithmetic saves; keep this model at FP32 (or BF16)")
    if precision == "fp16" and device == "cpu":
        return "CPU kernels emulate FP16 (it pays on GPUs)"
    if precision == "bf16":
        return "this CPU computes BF16 without AMX, or the model is small"
    return "the model (or the input) is too small for the reduced precision to pay"


def warning_text(label: str, precision: str, record: Mapping[str, Any], cause: str) -> str | None:
    """The warning for an engine whose recorded ratio is below NOT_FASTER, else None."""
    ratio = record.get("ratio")
    if ratio is None or ratio >= NOT_FASTER:
        return None
    return (f"{label}: the {precision} engine is not faster than FP32 on this machine ({ratio:.2f}x FP32's speed: "
            f"{record['ms']:.1f} ms against {record['fp32_ms']:.1f} ms at {record.get('input')}); likely cause: {cause}")
