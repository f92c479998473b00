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

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.backends.registry import BACKENDS, get_backend
from ppdeploy.core import device
from ppdeploy.core.cache import EngineCache, sha256_file
from ppdeploy.core.errors import (
    BackendUnavailable,
    BuildError,
    PPDeployError,
    storage_error,
)
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.deploy import speed
from ppdeploy.deploy.prepared import Prepared, backend_options
from ppdeploy.deploy.select import (
    FAILED,
    SKIPPED,
    USED,
    Attempt,
    chain_for,
    format_attempts,
    record,
)
from ppdeploy.deploy.trial import describe, trial_inference, trial_shapes
from ppdeploy.deploy.verify import generate_inputs
from ppdeploy.graph.heads import check_head
from ppdeploy.precision.registry import PRECISIONS
from ppdeploy.source import zoo
from ppdeploy.source.model import ModelSource, detect

log = logging.getLogger("ppdeploy.deploy.load")


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
    # A reduced-precision engine's measured speed against FP32 on the same backend (ppdeploy.deploy.speed), as
    # recorded in its cache entry: {"ratio": FP32 time / its time, "ms", "fp32_ms", "calls", "input"}.
    speed_vs_fp32: dict | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.source.name, "backend": self.backend, "precision": self.precision, "head": self.head,
            "cache_hit": self.cache_hit, "onnx": str(self.onnx_path) if self.onnx_path else None,
            "engine": str(self.engine_dir) if self.engine_dir else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "speed_vs_fp32": self.speed_vs_fp32,
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
    trial: bool = True,
) -> Deployment:
    """Prepare `model` (zoo name, Paddle model dir/file, .onnx, or paddle.nn.Layer + input_spec) and load it.

    backend: "auto" (fallback chain), one name (forced: fails clearly if it cannot run), or a list (chain).
    extra: backend switches. A key named after a backend (e.g. {"onnxruntime-cuda": {"pad_multiple": ...}}) holds
    switches for that backend alone, so a chain can carry GPU settings without changing the CPU engines' keys.
    head: an output head appended to the converted graph (ppdeploy.graph.heads, e.g. "ctc_greedy"); Paddle
    Inference, which runs the original program, is skipped then.
    trial: end each backend's load with one inference on generated input (ppdeploy.deploy.trial); when it fails,
    a cached engine is rebuilt once, then the chain falls through to the next backend. No caller in ppdeploy turns
    it off; do so only where one call at the profile's opt shape cannot be afforded and the engine is known to run.

    Any exception of a backend attempt (conversion, build, load, trial) is a failed attempt: recorded with its type
    and message in `attempts`, the log and the FALLBACKS counter, and the chain moves on.
    """
    if precision not in PRECISIONS:
        raise PPDeployError(f"unknown precision '{precision}'", hint=f"choose from {', '.join(PRECISIONS)}")
    precision = PRECISIONS.canonical(precision)
    cache = EngineCache(cache_dir)
    if shapes is not None and not isinstance(shapes, ShapeProfile):
        shapes = ShapeProfile.from_dict(shapes)
    options = BuildOptions(precision=precision, threads=threads, shapes=shapes or ShapeProfile(),
                           extra=dict(extra or {}))
    source = detect(model, input_spec, export_dir=None, exports_root=cache.root / "layer-exports")
    names, explicit = chain_for(backend)
    attempts: list[Attempt] = []
    if head is not None:
        check_head(head)
    prepared = Prepared(source, cache, opset, rebuild, calib, max_loss, dict(precision_options or {}), head)

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
            deployment = _deploy_on(be, prepared, backend_options(options, name), trial)
        except BackendUnavailable as exc:  # learnt only once the graph exists (e.g. an INT8 IR of another format)
            attempts.append(record(Attempt(name, SKIPPED, _one_line(exc), time.perf_counter() - start)))
            if explicit:
                raise
            continue
        except Exception as exc:  # any failure of one backend is that backend's; KeyboardInterrupt etc. go through
            attempts.append(record(Attempt(name, FAILED, _reason(exc), time.perf_counter() - start)))
            refused = storage_error(exc)
            if refused is not None:  # a read-only or full cache: every other backend would hit it too
                raise refused from exc
            if explicit:
                why = exc if isinstance(exc, PPDeployError) else describe(exc)
                raise BuildError(f"backend {name} failed for {source.name}: {why}") from exc
            continue
        attempts.append(record(Attempt(name, USED, "", time.perf_counter() - start)))
        deployment.attempts = attempts
        return deployment

    if explicit and attempts and attempts[-1].status == SKIPPED:
        error = BackendUnavailable(f"backend {names[0]} cannot run here: {attempts[-1].reason}")
    else:
        error = BackendUnavailable(f"no backend could run {source.name}: {format_attempts(attempts)}",
                                   hint="`ppdeploy doctor` shows what each backend needs")
    error.attempts = attempts  # for callers that count them (the server's fallback metric)
    raise error


def _precision_mismatch(be: Backend, precision: str, source: ModelSource) -> str | None:
    if be.consumes == "paddle" and precision != "fp32":
        return f"Paddle Inference runs the original FP32 program; {precision} is applied to the ONNX graph"
    if be.consumes == "paddle" and not source.is_paddle:
        return "Paddle Inference needs a Paddle model, not an ONNX file"
    if precision not in be.precisions:
        offered = BACKENDS.where(lambda cls: precision in cls.precisions)
        return (f"{precision} is not offered by {be.name}; use --backend {' or '.join(offered)}" if offered
                else f"no backend offers {precision}")
    return be.precision_unavailable(precision)


def _head_mismatch(be: Backend, head: str | None) -> str | None:
    if head is not None and be.consumes == "paddle":
        return f"Paddle Inference runs the original program; the {head} head is added to the ONNX graph"
    return None


def _deploy_on(be: Backend, prepared: Prepared, options: BuildOptions, trial: bool = True) -> Deployment:
    source = prepared.source
    precision_report, quantizer, requested = None, None, options
    if be.consumes == "paddle":
        model_path, model_parts, onnx_path = source.model_file, {"source": source.digest()}, None
    else:
        variant = prepared.for_precision(options.precision, be)
        model_path, precision_report, quantizer = variant.model_path, variant.report, variant.quantizer
        if variant.format not in be.formats:
            builders = BACKENDS.where(lambda cls: variant.format in cls.formats)
            raise BackendUnavailable(f"the {options.precision} model was quantized by {variant.quantizer} into the "
                                     f"{variant.format} format, which only {', '.join(builders)} build(s) from")
        if variant.inference_precision:  # as its gate judged it: e.g. the ops NNCF left unquantized run at BF16
            options = replace(options, extra={**options.extra, "inference_precision": variant.inference_precision})
        if variant.kept_fp32:  # as its gate judged it: these regions (ppdeploy.graph.regions) stay FP32
            options = replace(options, extra={**options.extra, "keep_fp32": list(variant.kept_fp32)})
        onnx_path = model_path
        model_parts = {"onnx": sha256_file(model_path), "precision": variant.key_parts}
    parts = {"model": model_parts, "backend": be.key_parts(options), "options": options.key_parts(),
             "device": _device_key(be, options)}
    label = f"{source.name} {be.name} {options.precision}"
    entry = prepared.cache.get_or_build("engine", parts, lambda out: be.build(model_path, out, options),
                                        label=label, rebuild=prepared.rebuild)
    timings = dict(prepared.timings)

    def load_and_try():
        start = time.perf_counter()
        runner = be.load(entry.path, options)
        timings["load"] = time.perf_counter() - start
        if trial:
            start = time.perf_counter()
            try:
                trial_inference(runner, options.shapes, _example(source, runner))
            except BaseException:
                runner.close()
                raise
            timings["trial"] = time.perf_counter() - start
        return runner

    try:
        runner = load_and_try()
    except Exception as exc:  # a cached engine that does not load or run (driver/library drift) is rebuilt once
        if not entry.hit:
            raise
        log.warning("cached %s engine in %s failed (%s); rebuilding once", be.name, entry.path, _reason(exc))
        entry = prepared.cache.get_or_build("engine", parts, lambda out: be.build(model_path, out, options),
                                            label=label, rebuild=True)
        runner = load_and_try()
    timings["build"] = entry.build_s
    cache_hit = entry.hit and (be.consumes == "paddle" or prepared.conversion_hit)
    speed_record = None
    if options.precision != "fp32" and be.consumes != "paddle":
        try:
            speed_record = _speed_vs_fp32(be, prepared, requested, entry, runner, label, quantizer)
        except BaseException:
            runner.close()
            raise
    return Deployment(runner, be.name, source, options.precision, [], onnx_path, entry.path, cache_hit, timings,
                      precision_report, prepared.head, speed_record)


def _speed_vs_fp32(be: Backend, prepared: Prepared, options: BuildOptions, entry: Any, runner: Runner, label: str,
                   quantizer: str | None) -> dict | None:
    """The engine's speed against FP32 on the same backend (ppdeploy.deploy.speed): read from its cache entry, or
    measured now (the FP32 engine built through the same cache) and recorded there; a warning when it does not pay."""
    record = (entry.meta.get("notes") or {}).get(speed.SPEED_NOTE)
    if record is None:
        try:
            reference = _deploy_on(be, prepared, replace(options, precision="fp32"), trial=False)
        except Exception as exc:  # the comparison is a report, never a reason to fail the engine that works
            log.info("%s: no FP32 engine to time against (%s)", label, _reason(exc))
            return None
        try:
            feeds = generate_inputs(runner.io, seed=0,
                                    shapes=trial_shapes(runner.io, options.shapes, _example(prepared.source, runner)))
            record = speed.measure(runner, reference.runner, feeds)
        finally:
            reference.close()
        prepared.cache.annotate(entry.path, speed.SPEED_NOTE, record)
    cause = speed.likely_cause(options.precision, be.device, quantizer, be.int8_quantizer,
                               set(device.cpu_info()["flags"]))
    text = speed.warning_text(label, options.precision, record, cause)
    if text:
        log.warning(text)
    return record


def _example(source: ModelSource, runner: Runner) -> dict[str, tuple[int, ...]] | None:
    """The bundled model's typical input shape, for a trial without a shape profile."""
    known = next((m for m in zoo.MODELS.values() if m.subdir == source.directory.name), None)
    return {runner.io.inputs[0].name: known.example_shape} if known and runner.io.inputs else None


def _reason(exc: BaseException) -> str:
    """An attempt's reason: our own errors by their message; anything else also by its type (DecodeError...)."""
    return _one_line(exc) if isinstance(exc, PPDeployError) else describe(exc)


def _one_line(exc: BaseException) -> str:
    """The first two lines: what failed, then (for conversions) which op — enough for a log line or a metric."""
    text = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return " | ".join(text[:2])[:400] if text else type(exc).__name__


def _device_key(backend: Backend, options: BuildOptions) -> dict:
    """The device part of an engine's cache key: the build target when the engine was built ahead of time for
    one (`ppdeploy build --target`, `extra: {target: ...}`), so a GPU server finds what CI built; else this
    machine's device identity."""
    target = options.extra.get("target")
    return {"target": target} if target else device.identity(backend.device)

