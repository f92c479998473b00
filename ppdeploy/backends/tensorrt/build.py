"""Engine build: parse the ONNX file (errors name the failing node), a strongly typed network, optimization
profiles, builder settings, timing cache, progress, serialization; writes the engine and its metadata."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.tensorrt.artifact import (
    ENGINE_FILE,
    META_FILE,
    atomic_write_bytes,
    aux_cache_path,
)
from ppdeploy.backends.tensorrt.library import (
    AMPERE_PLUS,
    Flavour,
    LibraryTraits,
    import_library,
    make_logger,
    traits_of,
)
from ppdeploy.backends.tensorrt.profiles import plan_profiles
from ppdeploy.backends.tensorrt.settings import BuilderSettings
from ppdeploy.core.errors import BuildError
from ppdeploy.core.tensors import TensorSpec, dims

log = logging.getLogger("ppdeploy.backends.tensorrt.backend")


def _progress_display() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True, highlight=False), transient=False)


def _make_progress_monitor(trt: Any, phases: dict[str, float], display: Progress | None):
    """IProgressMonitor that records how long each build phase took and, with a `display`, logs the top phases
    and draws a bar for the steps of each second-level phase."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._started: dict[str, float] = {}
            self._depth: dict[str, int] = {}
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._started[phase_name] = time.perf_counter()
            depth = self._depth[phase_name] = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
            if display is not None and depth <= 1:
                display.console.print(f"{'  ' * depth}{phase_name} ...", markup=False)
                if depth == 1 and int(num_steps) > 1:
                    self._bars[phase_name] = display.add_task(f"  {phase_name}", total=int(num_steps))

        def step_complete(self, phase_name, step):
            bar = self._bars.get(phase_name)
            if bar is not None:
                display.update(bar, completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            start = self._started.pop(phase_name, None)
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                display.remove_task(bar)
            if start is not None:
                seconds = time.perf_counter() - start
                phases[phase_name] = phases.get(phase_name, 0.0) + seconds
                if display is not None and self._depth.get(phase_name, 9) <= 1:
                    display.console.print(f"{'  ' * self._depth[phase_name]}{phase_name}: {seconds:.2f} s",
                                          markup=False)

    return Monitor()


def _set_target(trt: Any, traits: LibraryTraits, config: Any, target: str) -> None:
    """Build for `target` instead of this machine's GPU: RTX's one compute capability, TensorRT's AMPERE_PLUS."""
    problem = traits.target_problem(target)
    if problem:
        raise BuildError(problem, hint=f"--target {' | '.join(traits.targets()) or '(none here)'}")
    if target == AMPERE_PLUS:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        return
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + target.replace(".", "")), 0):
        raise BuildError(f"{traits.flavour.label} {traits.version} refused compute capability {target}")


def _parse_onnx(trt: Any, traits: LibraryTraits, model_path: Path, logger):
    builder = trt.Builder(logger)
    flags = 0
    if traits.strongly_typed_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external-data tensors relative to the model file.
    ok = parser.parse_from_file(str(model_path))
    if not ok or parser.num_errors:
        raise BuildError(parser_errors(parser, traits, model_path),
                         hint="check the ONNX opset/ops against the library's supported-operator list, or choose "
                              "another backend (--backend onnxruntime-cuda)")
    return builder, network, parser


def parser_errors(parser: Any, traits: LibraryTraits, model_path: Path) -> str:
    """The parser's errors as one message that names each failing node and its op."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node_name, op = _call(err, "node_name"), _call(err, "node_operator")
        desc, func = _call(err, "desc"), _call(err, "func")
        code = str(_call(err, "code")).split(".")[-1]
        where = f"node '{node_name}' (op {op})" if node_name or op else f"node #{_call(err, 'node')}"
        detail = desc if desc and desc not in ("false", "true") else ""
        lines.append(f"{where}: {code}" + (f": {detail}" if detail else "") + (f" [{func}]" if func else ""))
    if not lines:
        lines.append("the parser rejected the file without saying why")
    return f"{traits.flavour.label} {traits.version} cannot parse {model_path.name}: " + "; ".join(lines)


def _call(obj: Any, name: str) -> Any:
    try:
        value = getattr(obj, name)
        return value() if callable(value) else value
    except Exception:
        return None


def _network_io(trt: Any, network: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(t) -> TensorSpec:
        return TensorSpec(t.name, np.dtype(trt.nptype(t.dtype)).name, dims(tuple(t.shape)))

    return ([spec(network.get_input(i)) for i in range(network.num_inputs)],
            [spec(network.get_output(i)) for i in range(network.num_outputs)])


def build_engine(flavour: Flavour, model_path: Path, out_dir: Path, options: BuildOptions) -> dict[str, Any]:
    """Parse `model_path`, build a serialized engine into `out_dir`, return (and write) its metadata."""
    trt, reason = import_library(flavour)
    if trt is None:
        raise BuildError(reason or f"{flavour.label} unavailable")
    traits = traits_of(flavour, trt)
    settings = BuilderSettings.from_options(options)
    logger = make_logger(trt)
    start = time.perf_counter()
    builder, network, _parser = _parse_onnx(trt, traits, Path(model_path), logger)
    inputs, outputs = _network_io(trt, network)
    profiles = plan_profiles(inputs, options, settings)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_mib) << 20)
    config.builder_optimization_level = int(settings.optimization_level)
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if settings.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    elif settings.tf32:
        raise BuildError(f"{traits.flavour.label} {traits.version} has no TF32 builder flag; drop tf32=True")
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        # Without this the engine would embed the lean runtime, which RTX does not ship (the build fails) and which
        # TensorRT users install anyway alongside the full library.
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if settings.target is not None:
        _set_target(trt, traits, config, settings.target)
    elif settings.hardware_compatible and traits.hardware_compat_level:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    for plan in profiles:
        profile = builder.create_optimization_profile()
        for name, rng in plan.items():
            profile.set_shape(name, rng.min, rng.opt, rng.max)
        config.add_optimization_profile(profile)

    timing_path = aux_cache_path(Path(out_dir), "timing", traits) if traits.timing_cache and settings.timing_cache else None
    timing_reused = False
    if timing_path is not None:
        blob = timing_path.read_bytes() if timing_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        timing_reused = bool(blob) and config.set_timing_cache(cache, ignore_mismatch=False)
        if not timing_reused:
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    phases: dict[str, float] = {}
    show = settings.progress if settings.progress is not None else sys.stderr.isatty()
    display = _progress_display() if show and hasattr(trt, "IProgressMonitor") else None
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _make_progress_monitor(trt, phases, display)
    with display or contextlib.nullcontext():
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "no error was logged"
        raise BuildError(f"{traits.flavour.label} {traits.version} failed to build {Path(model_path).name}: {detail}")
    engine_bytes = memoryview(serialized).tobytes()
    (Path(out_dir) / ENGINE_FILE).write_bytes(engine_bytes)
    if timing_path is not None:
        try:
            atomic_write_bytes(timing_path, memoryview(config.get_timing_cache().serialize()).tobytes())
        except Exception as exc:  # a read-only cache dir must not fail a good build
            log.warning("could not save the TensorRT timing cache to %s: %s", timing_path, exc)
    meta = {
        "library": traits.flavour.name, "version": traits.version,
        "build_s": round(time.perf_counter() - start, 3),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "timing_cache": str(timing_path) if timing_path else None, "timing_cache_reused": timing_reused,
        "settings": settings.engine_key(), "target": settings.target,
        "profiles": [{n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in p.items()}
                     for p in profiles],
        "inputs": [asdict(t) for t in inputs], "outputs": [asdict(t) for t in outputs],
        "engine_bytes": len(engine_bytes),
    }
    (Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=2))
    log.info("%s built %s in %.1fs", traits.flavour.label, Path(model_path).name, meta["build_s"])
    return meta
