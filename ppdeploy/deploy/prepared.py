"""The model one `load_model` call prepares once and every backend of its chain builds from: converted lazily,
given its output head, and adjusted to each precision (and INT8 quantizer) a backend asks for.

The INT8 quantizer choice lives here and only here (`quantizer_for`): the backend's own quantizer (for OpenVINO, NNCF),
in its variant that runs what stays unquantized at the fastest precision the backend runs here (INT8 + BF16 on CPUs with
avx512_bf16/AMX). When the backend's own quantizer is missing the choice is refused with the `pip install` that adds
it, never replaced by another quantizer's graph: ONNX Runtime's QDQ graph runs slower than FP32 on OpenVINO
(BENCHMARKS.md), and a slower "INT8" is worse than an error. A backend without a quantizer of its own (TensorRT, the
ONNX Runtime ones) builds from the QDQ graph, which is its native INT8 form.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.backends.base import Backend, BuildOptions
from ppdeploy.backends.registry import BACKENDS
from ppdeploy.convert.pipeline import to_onnx
from ppdeploy.core.cache import EngineCache, sha256_file
from ppdeploy.core.errors import BackendUnavailable, PPDeployError
from ppdeploy.graph import heads
from ppdeploy.precision import build as precision_build
from ppdeploy.precision.registry import DEFAULT_QUANTIZER, QUANTIZERS
from ppdeploy.source.model import ModelSource

AUTO = "auto"


def quantizer_for(backend: type[Backend] | Backend, precision_options: Mapping[str, Any] | None = None) -> str:
    """The INT8 quantizer `backend` builds from: the one `precision_options` names, or for none / "auto" the
    backend's native quantizer (`Backend.int8_quantizer`, DEFAULT_QUANTIZER when it has none) in its fastest variant
    here (`fastest_variant`). BackendUnavailable, with the reason and the `pip install`, when the native quantizer's
    libraries are missing: no silent fallback to a graph the backend runs slower than FP32."""
    chosen = (precision_options or {}).get("quantizer")
    if chosen not in (None, AUTO):
        return QUANTIZERS.canonical(chosen)
    native = backend.int8_quantizer or DEFAULT_QUANTIZER
    quant = QUANTIZERS.get(native)
    reason = quant.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(
            f"INT8 on {backend.name} is built by its own quantizer ({native}), which cannot run here: {reason}; "
            f"another quantizer's graph would run slower than FP32 on {backend.name}",
            hint=f"{_pip_of(reason) or 'install it'}, or pass precision_options={{'quantizer': 'onnxruntime'}} "
                 "(--quantizer onnxruntime) knowingly, or use another precision/backend")
    return fastest_variant(backend, native)


def fastest_variant(backend: type[Backend] | Backend, native: str) -> str:
    """`native`, or its variant (same artifact format, registered in QUANTIZERS) whose unquantized ops run at a
    reduced precision `backend` runs on this machine (`Backend.precision_unavailable`), e.g. NNCF INT8 with BF16 for
    the rest on a CPU with avx512_bf16/AMX. The gate then judges the variant as it will run."""
    instance = backend() if isinstance(backend, type) else backend
    base = QUANTIZERS.get(native)
    for name, quant in QUANTIZERS.items():
        if (quant.format == base.format and quant.run_precision not in (base.run_precision, "fp32")
                and quant.unavailable_reason() is None and instance.precision_unavailable(quant.run_precision) is None):
            return name
    return native


def _pip_of(reason: str) -> str | None:
    """The `pip install ...` named inside an unavailable reason ("nncf is not installed (pip install ...)")."""
    start = reason.find("pip install")
    return reason[start:].rstrip(")") if start >= 0 else None


def backend_options(options: BuildOptions, backend: str) -> BuildOptions:
    """The options one backend sees: the shared switches plus its own section of `extra` (a key named after a
    registered backend holds switches for that backend alone)."""
    own = options.extra.get(backend) or {}
    extra = {k: v for k, v in options.extra.items() if k not in BACKENDS}
    extra.update(own)
    return replace(options, extra=extra)


@dataclass
class Variant:
    """The graph one backend builds from, at one precision."""

    model_path: Path
    key_parts: dict[str, Any]  # the precision's part of the engine key
    report: dict | None  # the precision step's record (gate, exclusions, quantizer), None for FP32
    format: str = "onnx"  # artifact format (Backend.formats)
    quantizer: str | None = None
    inference_precision: str | None = None  # the float ops' precision when not the precision's own
    kept_fp32: tuple[str, ...] = ()  # regions the backend keeps FP32 (BF16 is a backend setting, so are they)


class Prepared:
    """Lazily converted / precision-adjusted ONNX shared by all backends tried for one load_model call."""

    def __init__(self, source: ModelSource, cache: EngineCache, opset: int | None, rebuild: bool, calib: Any,
                 max_loss: float | None, precision_options: Mapping[str, Any] | None, head: str | None = None):
        self.source, self.cache, self.opset, self.rebuild, self.head = source, cache, opset, rebuild, head
        self.calib, self.max_loss = calib, max_loss
        # Extra keywords for ppdeploy.precision.apply (method, keep_fp32, exclude, metric, task_metric, quantizer...).
        self.precision_options: dict[str, Any] = dict(precision_options or {})
        self._onnx = None
        self._precision: dict[str, Any] = {}
        # A conversion or precision step that failed fails the same way for the next backend in the chain:
        # remember the error instead of paying for the attempt again.
        self._failed: dict[str, PPDeployError] = {}
        self.timings: dict[str, float] = {}
        self.conversion_hit = True

    def _once(self, step: str, fn):
        if step in self._failed:
            raise self._failed[step]
        try:
            return fn()
        except PPDeployError as exc:
            self._failed[step] = exc
            raise

    def onnx(self):
        if self._onnx is None:
            result = self._once("convert", lambda: to_onnx(self.source, opset=self.opset, cache=self.cache,
                                                           rebuild=self.rebuild))
            self.timings["convert"] = result.seconds
            self.conversion_hit = result.cache_hit
            if self.head is not None:
                result = self._once("head", lambda: self._with_head(result))
            self._onnx = result
        return self._onnx

    def _with_head(self, conv):
        parts = {"onnx": sha256_file(conv.onnx_path), "head": self.head, "version": heads.VERSION}
        entry = self.cache.get_or_build("onnx-head", parts,
                                        lambda out: heads.add_head(conv.onnx_path, out / conv.onnx_path.name,
                                                                   self.head),
                                        label=f"{self.source.name} + {self.head} head", rebuild=self.rebuild)
        self.conversion_hit = self.conversion_hit and entry.hit
        return replace(conv, onnx_path=entry.path / conv.onnx_path.name)

    def options_for(self, precision: str, backend: type[Backend] | Backend) -> dict[str, Any]:
        """The precision options `backend` builds from; for INT8 with its quantizer resolved (quantizer_for)."""
        options = dict(self.precision_options)
        if precision == "int8":
            options["quantizer"] = quantizer_for(backend, options)
        elif options.get("quantizer") == AUTO:
            options.pop("quantizer")
        return options

    def for_precision(self, precision: str, backend: type[Backend] | Backend) -> Variant:
        """The graph `backend` should build from at `precision`."""
        conv = self.onnx()
        if precision == "fp32":
            return Variant(conv.onnx_path, {"precision": "fp32"}, None)
        options = self.options_for(precision, backend)
        step = f"{precision}:{options.get('quantizer', 'default')}"
        if step not in self._precision:
            start = time.perf_counter()
            res = self._once(step, lambda: precision_build.apply(
                conv.onnx_path, precision, cache=self.cache, calib=self.calib, max_loss=self.max_loss, **options))
            self.timings["precision"] = time.perf_counter() - start
            self._precision[step] = res
        res = self._precision[step]
        # BF16 is a backend setting, so its FP32 regions are too, also for INT8 graphs whose unquantized ops run at
        # BF16 (FP16 and plain INT8 graphs have their kept nodes built in).
        kept = tuple(res.kept_fp32) if "bf16" in (res.backend_hint, res.inference_precision) else ()
        return Variant(res.onnx_path, res.key_parts(), res.report, res.format,
                       res.report.get("quantizer") if res.report else None, res.inference_precision, kept)
