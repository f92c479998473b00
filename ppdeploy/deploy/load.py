"""The main entry point: any model -> a ready Runner on the best backend that works here.

    source -> convert (cached) -> precision (cached) -> engine build (cached) -> runner

Each stage is a plain call on plain data; each cache is keyed on content, so a second start of the same
model converts and builds nothing. Backends are tried in order; every skip or failure is recorded with its
reason (see ppdeploy.deploy.select).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ppdeploy.core import device
from ppdeploy.backends import REGISTRY, get_backend
from ppdeploy.backends.base import BuildOptions, Runner
from ppdeploy.core.cache import EngineCache
from ppdeploy.core.errors import BackendUnavailable, BuildError, PPDeployError
from ppdeploy.deploy.select import FAILED, SKIPPED, USED, Attempt, chain_for, format_attempts, record
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.source.model import ModelSource, detect

log = logging.getLogger("ppdeploy.deploy.load")

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class Deployment:
    runner: Runner
    backend: str
    source: ModelSource
    precision: str
    attempts: list[Attempt]
    onnx_path: Path | None = None
    engine_dir: Path | None = None
    cache_hit: bool = False  # True when neither conversion nor engine build ran now
    timings: dict[str, float] = field(default_factory=dict)  # seconds: convert, precision, build, load
    precision_report: dict | None = None
    head: str | None = None  # output head appended to the graph (ppdeploy.graph.heads)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.source.name, "backend": self.backend, "precision": self.precision, "head": self.head,
            "cache_hit": self.cache_hit, "onnx": str(self.onnx_path) if self.onnx_path else None,
            "engine": str(self.engine_dir) if self.engine_dir else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "attempts": [a.to_dict() for a in self.attempts],
        }

    def close(self) -> None:
        self.runner.close()


def load_model(
    model: Any,
    *,
    backend: str | Sequence[str] = "auto",
    precision: str = "fp32",
    shapes: ShapeProfile | Mapping | None = None,
    threads: int | None = None,
    opset: int | None = None,
    cache_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    input_spec: Sequence[Any] | None = None,
    calib: Any = None,
    max_loss: float | None = None,
    rebuild: bool = False,
    precision_options: Mapping[str, Any] | None = None,
    head: str | None = None,
) -> Deployment:
    """Prepare `model` (zoo name, Paddle model dir/file, .onnx, or paddle.nn.Layer + input_spec) and load it.

    backend: "auto" (fallback chain), one name (forced: fails clearly if it cannot run), or a list (chain).
    extra: backend switches. A key named after a backend (e.g. {"onnxruntime-cuda": {"pad_multiple": ...}}) holds
    switches for that backend alone, so a chain can carry GPU settings without changing the CPU engines' keys.
    head: an output head appended to the converted graph (ppdeploy.graph.heads, e.g. "ctc_greedy"); Paddle
    Inference, which runs the original program, is skipped then.
    """
    if precision not in PRECISIONS:
        raise PPDeployError(f"unknown precision '{precision}'", hint=f"choose from {', '.join(PRECISIONS)}")
    cache = EngineCache(cache_dir)
    if shapes is not None and not isinstance(shapes, ShapeProfile):
        shapes = ShapeProfile.from_dict(shapes)
    options = BuildOptions(precision=precision, threads=threads, shapes=shapes or ShapeProfile(),
                           extra=dict(extra or {}))
    source = detect(model, input_spec, export_dir=None, exports_root=cache.root / "layer-exports")
    names, explicit = chain_for(backend)
    attempts: list[Attempt] = []
    if head is not None:
        from ppdeploy.graph.heads import check_head

        check_head(head)
    prepared = _Prepared(source, cache, opset, rebuild, calib, max_loss, dict(precision_options or {}), head)

    for name in names:
        start = time.perf_counter()
        try:
            be = get_backend(name)
        except BackendUnavailable as exc:
            attempts.append(record(Attempt(name, SKIPPED, str(exc))))
            continue
        reason = be.unavailable_reason() or _precision_mismatch(be, precision, source) or _head_mismatch(be, head)
        if reason:
            attempts.append(record(Attempt(name, SKIPPED, reason)))
            continue
        try:
            deployment = _deploy_on(be, prepared, _options_for(options, name))
        except BackendUnavailable as exc:  # learnt only once the graph exists (e.g. an OpenVINO-only INT8 model)
            attempts.append(record(Attempt(name, SKIPPED, _one_line(exc), time.perf_counter() - start)))
            if explicit:
                raise
            continue
        except (PPDeployError, OSError, RuntimeError) as exc:
            attempts.append(record(Attempt(name, FAILED, _one_line(exc), time.perf_counter() - start)))
            if explicit:
                raise BuildError(f"backend {name} failed for {source.name}: {exc}") from exc
            continue
        attempts.append(record(Attempt(name, USED, "", time.perf_counter() - start)))
        deployment.attempts = attempts
        return deployment

    if explicit and attempts and attempts[-1].status == SKIPPED:
        raise BackendUnavailable(f"backend {names[0]} cannot run here: {attempts[-1].reason}")
    raise BackendUnavailable(f"no backend could run {source.name}: {format_attempts(attempts)}",
                             hint="`ppdeploy doctor` shows what each backend needs")


class _Prepared:
    """Lazily converted / precision-adjusted ONNX shared by all backends tried for one load_model call."""

    def __init__(self, source, cache, opset, rebuild, calib, max_loss, precision_options, head=None):
        self.source, self.cache, self.opset, self.rebuild, self.head = source, cache, opset, rebuild, head
        self.calib, self.max_loss = calib, max_loss
        # Extra keywords for ppdeploy.precision.build.apply (method, keep_fp32, exclude, metric, task_metric, ...).
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
            from ppdeploy.convert.pipeline import to_onnx

            result = self._once("convert", lambda: to_onnx(self.source, opset=self.opset, cache=self.cache,
                                                           rebuild=self.rebuild))
            self.timings["convert"] = result.seconds
            self.conversion_hit = result.cache_hit
            if self.head is not None:
                result = self._once("head", lambda: self._with_head(result))
            self._onnx = result
        return self._onnx

    def _with_head(self, conv):
        from ppdeploy.core.cache import sha256_file
        from ppdeploy.graph import heads

        parts = {"onnx": sha256_file(conv.onnx_path), "head": self.head, "version": heads.VERSION}
        entry = self.cache.get_or_build("onnx-head", parts,
                                        lambda out: heads.add_head(conv.onnx_path, out / conv.onnx_path.name,
                                                                   self.head),
                                        label=f"{self.source.name} + {self.head} head", rebuild=self.rebuild)
        self.conversion_hit = self.conversion_hit and entry.hit
        return replace(conv, onnx_path=entry.path / conv.onnx_path.name)

    def options_for(self, precision: str, backend: str) -> dict[str, Any]:
        """The precision options one backend builds from. INT8 for OpenVINO defaults to NNCF's IR (a QDQ graph runs
        slower than FP32 there); the other backends, and a chain falling back past OpenVINO, get the QDQ graph."""
        options = dict(self.precision_options)
        if precision == "int8" and backend == "openvino" and "quantizer" not in options:
            from ppdeploy.backends.openvino import quantize as int8_openvino

            if int8_openvino.available() is None:
                options["quantizer"] = "openvino"
        return options

    def for_precision(self, precision: str, backend: str):
        """(model path, precision key parts, report, backend hint, regions kept FP32 by the backend) for the graph
        `backend` should build from."""
        conv = self.onnx()
        if precision == "fp32":
            return conv.onnx_path, {"precision": "fp32"}, None, None, []
        options = self.options_for(precision, backend)
        step = f"{precision}:{options.get('quantizer', 'default')}"
        if step not in self._precision:
            from ppdeploy.precision import build as precision_mod

            start = time.perf_counter()
            res = self._once(step, lambda: precision_mod.apply(
                conv.onnx_path, precision, cache=self.cache, calib=self.calib, max_loss=self.max_loss, **options))
            self.timings["precision"] = time.perf_counter() - start
            self._precision[step] = res
        res = self._precision[step]
        # BF16 is a backend setting, so its FP32 regions are too (an FP16 graph has its kept nodes built in).
        kept = list(res.kept_fp32) if res.backend_hint == "bf16" else []
        return res.onnx_path, res.key_parts(), res.report, res.backend_hint, kept


def _options_for(options: BuildOptions, backend: str) -> BuildOptions:
    """The options one backend sees: the shared switches plus its own section of `extra`."""
    own = options.extra.get(backend) or {}
    extra = {k: v for k, v in options.extra.items() if k not in REGISTRY}
    extra.update(own)
    return replace(options, extra=extra)


def _precision_mismatch(be, precision: str, source: ModelSource) -> str | None:
    if be.consumes == "paddle" and precision != "fp32":
        return f"Paddle Inference runs the original FP32 program; {precision} is applied to the ONNX graph"
    if be.consumes == "paddle" and not source.is_paddle:
        return "Paddle Inference needs a Paddle model, not an ONNX file"
    if precision == "bf16" and be.name != "openvino":
        return "bf16 is offered through OpenVINO's CPU inference precision; use --backend openvino"
    if precision == "bf16" and not device.cpu_supports_bf16():
        # OpenVINO would quietly run f32 instead: say so rather than report a bf16 engine that is not one
        return "bf16 requested but this CPU has no avx512_bf16/AMX"
    return None


def _head_mismatch(be, head: str | None) -> str | None:
    if head is not None and be.consumes == "paddle":
        return f"Paddle Inference runs the original program; the {head} head is added to the ONNX graph"
    return None


def _deploy_on(be, prepared: _Prepared, options: BuildOptions) -> Deployment:
    source = prepared.source
    precision_report = None
    if be.consumes == "paddle":
        model_path, model_parts, onnx_path = source.model_file, {"source": source.digest()}, None
    else:
        model_path, precision_parts, precision_report, hint, kept = prepared.for_precision(options.precision, be.name)
        if hint in ("openvino", "openvino-bf16") and be.name != "openvino":
            raise BackendUnavailable(f"the {options.precision} model was quantized with NNCF into OpenVINO's own "
                                     "format, which only the openvino backend runs")
        if hint == "openvino-bf16":  # as its gate judged it: the ops NNCF left unquantized run at BF16
            options = replace(options, extra={**options.extra, "inference_precision": "bf16"})
        if kept:  # as its gate judged it: these regions (ppdeploy.graph.regions) stay FP32
            options = replace(options, extra={**options.extra, "keep_fp32": kept})
        onnx_path = model_path
        from ppdeploy.core.cache import sha256_file

        model_parts = {"onnx": sha256_file(model_path), "precision": precision_parts}
    parts = {"model": model_parts, "backend": be.key_parts(options), "options": options.key_parts(),
             "device": device.identity(be.device)}
    label = f"{source.name} {be.name} {options.precision}"
    entry = prepared.cache.get_or_build("engine", parts, lambda out: be.build(model_path, out, options),
                                        label=label, rebuild=prepared.rebuild)
    start = time.perf_counter()
    try:
        runner = be.load(entry.path, options)
    except Exception as exc:  # a cached engine that does not load (driver/library drift) is rebuilt once
        if not entry.hit:
            raise
        log.warning("cached %s engine in %s failed to load (%s); rebuilding once", be.name, entry.path, _one_line(exc))
        entry = prepared.cache.get_or_build("engine", parts, lambda out: be.build(model_path, out, options),
                                            label=label, rebuild=True)
        start = time.perf_counter()
        runner = be.load(entry.path, options)
    timings = dict(prepared.timings)
    timings["build"] = entry.build_s
    timings["load"] = time.perf_counter() - start
    cache_hit = entry.hit and (be.consumes == "paddle" or prepared.conversion_hit)
    return Deployment(runner, be.name, source, options.precision, [], onnx_path, entry.path, cache_hit, timings,
                      precision_report, prepared.head)


def _one_line(exc: BaseException) -> str:
    """The first two lines: what failed, then (for conversions) which op — enough for a log line or a metric."""
    text = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return " | ".join(text[:2])[:400] if text else type(exc).__name__
