"""TensorRT engines from full TensorRT (10.x / 11.x, ``import tensorrt``) or TensorRT-RTX (``import tensorrt_rtx_bindings``).

One implementation serves both libraries; everything that differs between them lives in `LibraryTraits`.
Networks are always built strongly typed: precision comes from the ONNX graph (see ppdeploy.precision.build), which is
the only way TensorRT 11 and TensorRT-RTX accept it (they have no FP16/INT8 builder flags) and keeps TensorRT 10
on the same path.

What has run on real hardware, plainly (2026-11-25):
- Build (ONNX parse with node-named errors, strongly typed network, optimization profiles, workspace limit, progress
  monitor, serialization) runs with the real TensorRT-RTX 1.7.1 builder on CPU-only machines; the tests in
  tests/backends/test_tensorrt.py exercise it. Full TensorRT 10/11 was not installable anywhere available to this
  project; its code path differs only where `LibraryTraits` says so and has never executed.
- The runtime half (deserialize, execution contexts, ``execute_async_v3``) has never executed: TensorRT-RTX refuses
  the only GPU lent to the project (H100, compute capability 9.0), and full TensorRT was not there. The CUDA layer it
  uses (`CudaMemory`: pinned staging, device buffers, async copies, events) did run on the H100 in a gpu-marked test.
  The pure parts of the runner (profile choice, buffer sizing) are tested on CPU.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.backends.base import Backend, BuildOptions, IOSpec, Runner, TensorSpec, dims
from ppdeploy.core.errors import BuildError, InputError
from ppdeploy.core.shapes import InputRange, ShapeProfile

log = logging.getLogger("ppdeploy.backends.tensorrt.backend")

ENGINE_FILE = "model.engine"
META_FILE = "engine.json"


# ---------------------------------------------------------------------------------------------------------------
# The library differences, in one place
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flavour:
    """Which TensorRT library a backend name means, before importing it."""

    name: str  # registry name
    module: str  # Python import name
    label: str
    install: str


TENSORRT = Flavour("tensorrt", "tensorrt", "TensorRT", "pip install tensorrt; versions 10.x and 11.x, NVIDIA GPU needed")
TENSORRT_RTX = Flavour(
    "tensorrt-rtx", "tensorrt_rtx_bindings", "TensorRT-RTX",
    "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings (or: pip install 'ppdeploy[tensorrt-rtx]')",
)


@dataclass(frozen=True)
class LibraryTraits:
    """What the imported library can do. Derived from the module itself wherever it exposes the answer."""

    flavour: Flavour
    version: str
    major: int
    minor: int
    # TensorRT (not RTX) tunes tactics at build time and can persist the timings; in RTX the timing cache is a no-op.
    timing_cache: bool
    # TensorRT-RTX compiles kernels just in time at run time; its runtime cache keeps them across processes.
    runtime_cache: bool
    # TensorRT 10 still has the STRONGLY_TYPED creation flag; TensorRT 11 networks are strongly typed by default.
    strongly_typed_flag: bool
    # Hardware-compatible engines: TensorRT's AMPERE_PLUS level. RTX engines are portable across its supported
    # architectures by default and reject the setting.
    hardware_compat_level: bool
    # Compute capabilities the library can build for or run on, as "major.minor" strings; None means "min_cc and up".
    supported_cc: tuple[str, ...] | None
    min_cc: float

    def cc_problem(self, cc: str) -> str | None:
        """None when this library runs on a GPU of compute capability `cc` ("9.0"), else why not."""
        try:
            value = float(cc)
        except ValueError:
            return None  # unknown spelling: let the runtime decide rather than refuse a GPU we cannot parse
        if self.supported_cc is not None:
            if cc not in self.supported_cc:
                return (f"{self.flavour.label} {self.version} does not support compute capability {cc}; "
                        f"it supports {', '.join(self.supported_cc)}")
            return None
        if value < self.min_cc:
            return f"{self.flavour.label} {self.version} needs compute capability >= {self.min_cc}, this GPU has {cc}"
        return None


def traits_of(flavour: Flavour, trt: Any) -> LibraryTraits:
    version = str(getattr(trt, "__version__", "0.0"))
    parts = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    major, minor = int(parts[0]), int(parts[1])
    rtx = flavour is TENSORRT_RTX
    supported = None
    if rtx:
        # The ComputeCapability enum lists exactly the SM targets this RTX release can build for (SM75, SM80, ...).
        names = [n for n in dir(getattr(trt, "ComputeCapability", object)) if re.fullmatch(r"SM\d{2,3}", n)]
        supported = tuple(sorted((f"{n[2:-1]}.{n[-1]}" for n in names), key=float)) or None
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return LibraryTraits(
        flavour=flavour, version=version, major=major, minor=minor,
        timing_cache=not rtx,
        runtime_cache=rtx and hasattr(trt, "IRuntimeCache"),
        strongly_typed_flag=creation is not None and hasattr(creation, "STRONGLY_TYPED"),
        hardware_compat_level=not rtx and hasattr(trt, "HardwareCompatibilityLevel"),
        supported_cc=supported,
        # TensorRT 10.13+ (CUDA 13 builds) and 11 dropped Volta (7.0); earlier 10.x still ran there.
        min_cc=7.5 if rtx or major >= 11 or (major == 10 and minor >= 13) else 7.0,
    )


def import_library(flavour: Flavour) -> tuple[Any | None, str | None]:
    """(module, None) or (None, why it cannot be imported)."""
    if importlib.util.find_spec(flavour.module) is None:
        return None, f"library missing: {flavour.label} is not installed ({flavour.install})"
    try:
        return importlib.import_module(flavour.module), None
    except Exception as exc:  # e.g. the PyPI 'tensorrt' stub that fails at import, or missing libnvinfer
        return None, f"library broken: importing {flavour.module} failed: {exc}"


# ---------------------------------------------------------------------------------------------------------------
# Builder settings: everything in BuildOptions.extra that the TensorRT builder reads, with its defaults spelled out
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuilderSettings:
    workspace_mib: int = 2048  # memory-pool limit for tactic scratch space
    optimization_level: int = 3  # builder_optimization_level 0..5
    tf32: bool = False  # off by default: TF32 changes the rec model's outputs by up to 2e-2
    version_compatible: bool = False  # engine runs on later TensorRT versions of the same major
    hardware_compatible: bool = False  # TensorRT: AMPERE_PLUS engines; RTX engines are portable by default
    timing_cache: bool = True  # TensorRT: persist tactic timings beside the engine cache
    runtime_cache: bool = True  # TensorRT-RTX: persist JIT-compiled kernels beside the engine cache
    progress: bool | None = None  # progress bar on stderr; None: when stderr is a terminal
    # Further optimization profiles beyond BuildOptions.shapes, each {input: {min, opt, max}}; the runner picks the
    # first profile that holds a request's shapes, so list narrow, fast profiles first.
    profiles: tuple[Mapping[str, Mapping[str, Sequence[int]]], ...] = ()

    KEYS = ("workspace_mib", "optimization_level", "tf32", "version_compatible", "hardware_compatible",
            "timing_cache", "runtime_cache", "progress", "profiles")

    @classmethod
    def from_options(cls, options: BuildOptions) -> "BuilderSettings":
        extra = dict(options.extra or {})
        known = {k: extra[k] for k in cls.KEYS if k in extra}
        if "profiles" in known:
            known["profiles"] = tuple(known["profiles"])
        try:
            settings = cls(**known)
        except TypeError as exc:
            raise BuildError(f"bad TensorRT builder option: {exc}") from exc
        if not 0 <= int(settings.optimization_level) <= 5:
            raise BuildError(f"optimization_level must be 0..5, got {settings.optimization_level}")
        if int(settings.workspace_mib) < 1:
            raise BuildError(f"workspace_mib must be >= 1, got {settings.workspace_mib}")
        return settings

    def engine_key(self) -> dict[str, Any]:
        """The settings that change the engine (cache-only and display-only switches are left out)."""
        return {
            "workspace_mib": int(self.workspace_mib), "optimization_level": int(self.optimization_level),
            "tf32": bool(self.tf32), "version_compatible": bool(self.version_compatible),
            "hardware_compatible": bool(self.hardware_compatible),
            "profiles": [ShapeProfile.from_dict(p).to_dict() for p in self.profiles],
            "strongly_typed": True,
        }


# ---------------------------------------------------------------------------------------------------------------
# Optimization profiles (pure; no TensorRT needed)
# ---------------------------------------------------------------------------------------------------------------

def plan_profiles(inputs: Sequence[TensorSpec], options: BuildOptions,
                  settings: BuilderSettings | None = None) -> list[dict[str, InputRange]]:
    """Resolve one min/opt/max range per network input for every optimization profile.

    Sources, in order: ``options.shapes`` (the model config's shapes, or ``ShapeProfile.from_samples`` over sample
    inputs), then ``settings.profiles``. Static inputs get their fixed shape. A dynamic input without a range is a
    BuildError naming it, because TensorRT cannot build it and its own message for this is cryptic.
    """
    settings = settings or BuilderSettings.from_options(options)
    sources = [options.shapes] if options.shapes or not settings.profiles else []
    sources += [ShapeProfile.from_dict(p) for p in settings.profiles]
    names = {t.name for t in inputs}
    plans: list[dict[str, InputRange]] = []
    for index, profile in enumerate(sources):
        unknown = sorted(set(profile.ranges) - names)
        if unknown:
            raise BuildError(f"shape profile {index} names unknown input(s) {unknown}; the model takes {sorted(names)}")
        plan: dict[str, InputRange] = {}
        for spec in inputs:
            rng = profile.ranges.get(spec.name)
            if rng is None:
                if spec.dynamic:
                    raise BuildError(
                        f"input {spec.describe()} has dynamic dims and profile {index} gives no min/opt/max for it",
                        hint="pass shapes={'%s': {'min': [...], 'opt': [...], 'max': [...]}} or collect them from "
                             "sample inputs with ShapeProfile.from_samples" % spec.name,
                    )
                fixed = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
                plan[spec.name] = InputRange(fixed, fixed, fixed)
                continue
            if len(rng.min) != len(spec.shape):
                raise BuildError(f"profile {index} gives input '{spec.name}' rank {len(rng.min)}, "
                                 f"the model has {spec.describe()}")
            for axis, want in enumerate(spec.shape):
                if want is not None and not (rng.min[axis] == rng.max[axis] == want):
                    raise BuildError(f"profile {index} varies dim {axis} of input '{spec.name}' "
                                     f"({rng.min[axis]}..{rng.max[axis]}) but the model fixes it to {want}")
            plan[spec.name] = rng
        plans.append(plan)
    return plans


def envelope(profiles: Sequence[Mapping[str, InputRange]]) -> ShapeProfile:
    """The smallest single range covering every profile, for the base Runner's early check."""
    out: dict[str, InputRange] = {}
    for name in profiles[0] if profiles else ():
        rngs = [p[name] for p in profiles]
        lo = tuple(min(r.min[i] for r in rngs) for i in range(len(rngs[0].min)))
        hi = tuple(max(r.max[i] for r in rngs) for i in range(len(rngs[0].max)))
        opt = tuple(min(max(o, l), h) for o, l, h in zip(rngs[0].opt, lo, hi))
        out[name] = InputRange(lo, opt, hi)
    return ShapeProfile(out)


def select_profile(profiles: Sequence[Mapping[str, InputRange]], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile holding every input shape; InputError listing the profiles when none does."""
    for index, profile in enumerate(profiles):
        if all(profile[n].contains(s) for n, s in shapes.items() if n in profile):
            return index
    described = "; ".join(
        f"#{i}: " + ", ".join(f"{n} {list(r.min)}..{list(r.max)}" for n, r in p.items()) for i, p in enumerate(profiles))
    got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    raise InputError(f"input shapes ({got}) fit none of the engine's optimization profiles ({described})",
                     hint="rebuild with a profile that covers these shapes (shapes=... / extra['profiles'])")


def nbytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------

def _make_logger(trt: Any):
    """A TensorRT logger that keeps errors (so exceptions can quote them) and forwards warnings to logging."""

    class Recorder(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("%s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("%s", msg)  # RTX warns about every no-op legacy setting; not user-relevant

    return Recorder()


def _make_progress_monitor(trt: Any, phases: dict[str, float], show: bool):
    """IProgressMonitor that records how long each build phase took and, if asked, draws a bar per top phase."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._started: dict[str, float] = {}
            self._steps: dict[str, int] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._started[phase_name] = time.perf_counter()
            self._steps[phase_name] = int(num_steps)
            self._depth[phase_name] = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
            if show and self._depth[phase_name] <= 1:
                sys.stderr.write(f"\r{'  ' * self._depth[phase_name]}{phase_name} ...\n")

        def step_complete(self, phase_name, step):
            total = self._steps.get(phase_name, 0)
            if show and self._depth.get(phase_name) == 1 and total > 1:
                done, before = int(20 * (step + 1) / total), int(20 * step / total)
                if done != before or step + 1 == total:  # redraw only when the bar moves
                    sys.stderr.write(f"\r  [{'#' * done}{'.' * (20 - done)}] {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            start = self._started.pop(phase_name, None)
            if start is not None:
                seconds = time.perf_counter() - start
                phases[phase_name] = phases.get(phase_name, 0.0) + seconds
                if show and self._depth.get(phase_name, 9) <= 1:
                    sys.stderr.write(f"\r{'  ' * self._depth[phase_name]}{phase_name}: {seconds:.2f} s\n")

    return Monitor()


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


def aux_cache_path(artifact_dir: Path, what: str, traits: LibraryTraits) -> Path:
    """Where a timing cache (build) or runtime cache (RTX run) lives: beside the engine cache entry, one file per
    library version and GPU, since both caches are only valid for that pair."""
    from ppdeploy.core.device import identity

    gpu = identity("gpu").get("gpu") or {}
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu.get('name', 'nogpu')}-sm{gpu.get('compute_capability', '')}")
    return artifact_dir.parent / f"_{what}-{traits.flavour.name}-{traits.version}-{tag}.bin"


def build_engine(flavour: Flavour, model_path: Path, out_dir: Path, options: BuildOptions) -> dict[str, Any]:
    """Parse `model_path`, build a serialized engine into `out_dir`, return (and write) its metadata."""
    trt, reason = import_library(flavour)
    if trt is None:
        raise BuildError(reason or f"{flavour.label} unavailable")
    traits = traits_of(flavour, trt)
    settings = BuilderSettings.from_options(options)
    logger = _make_logger(trt)
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
    if settings.hardware_compatible and traits.hardware_compat_level:
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
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _make_progress_monitor(trt, phases, bool(show))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "no error was logged"
        raise BuildError(f"{traits.flavour.label} {traits.version} failed to build {Path(model_path).name}: {detail}")
    engine_bytes = memoryview(serialized).tobytes()
    (Path(out_dir) / ENGINE_FILE).write_bytes(engine_bytes)
    if timing_path is not None:
        try:
            _atomic_write_bytes(timing_path, memoryview(config.get_timing_cache().serialize()).tobytes())
        except Exception as exc:  # a read-only cache dir must not fail a good build
            log.warning("could not save the TensorRT timing cache to %s: %s", timing_path, exc)
    meta = {
        "library": traits.flavour.name, "version": traits.version,
        "build_s": round(time.perf_counter() - start, 3),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "timing_cache": str(timing_path) if timing_path else None, "timing_cache_reused": timing_reused,
        "settings": settings.engine_key(),
        "profiles": [{n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in p.items()}
                     for p in profiles],
        "inputs": [asdict(t) for t in inputs], "outputs": [asdict(t) for t in outputs],
        "engine_bytes": len(engine_bytes),
    }
    (Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=2))
    log.info("%s built %s in %.1fs", traits.flavour.label, Path(model_path).name, meta["build_s"])
    return meta


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_meta(artifact_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(artifact_dir) / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"TensorRT artifact in {artifact_dir} has no readable {META_FILE}: {exc}") from exc


def meta_io(meta: Mapping[str, Any]) -> IOSpec:
    def spec(d) -> TensorSpec:
        return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]))

    return IOSpec(tuple(spec(d) for d in meta["inputs"]), tuple(spec(d) for d in meta["outputs"]))


def meta_profiles(meta: Mapping[str, Any]) -> list[dict[str, InputRange]]:
    return [{n: InputRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for n, r in p.items()}
            for p in meta["profiles"]]


# ---------------------------------------------------------------------------------------------------------------
# CUDA memory: the only CUDA calls the runner makes (cuda-python's runtime API; no torch needed)
# ---------------------------------------------------------------------------------------------------------------

def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return None
    return cudart


class CudaError(BuildError):
    """A CUDA runtime call failed."""


class CudaMemory:
    """Streams, device buffers, pinned host buffers, async copies and events, every return code checked."""

    def __init__(self, device: int = 0):
        rt = _import_cudart()
        if rt is None:
            raise CudaError("cuda-python is not installed (pip install cuda-python); the TensorRT runner needs it")
        self.rt = rt
        self._check(rt.cudaSetDevice(device), "cudaSetDevice")
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []

    def _check(self, result: Any, what: str) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            msg = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{what} failed: {getattr(err, 'name', err)} ({msg})")
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def device_alloc(self, size: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(1, size)), f"cudaMalloc({size})"))
        self._device_ptrs.append(ptr)
        return ptr

    def host_alloc(self, size: int) -> tuple[int, np.ndarray]:
        """Pinned (page-locked) host memory and a uint8 numpy view of it: async copies need pinned memory."""
        ptr = int(self._check(self.rt.cudaMallocHost(max(1, size)), f"cudaMallocHost({size})"))
        self._host_ptrs.append(ptr)
        view = np.ctypeslib.as_array((ctypes.c_uint8 * max(1, size)).from_address(ptr))
        return ptr, view

    def h2d(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync(H2D)")

    def d2h(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync(D2H)")

    def d2d(self, dst: int, src: int, size: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src, size, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync(D2D)")

    def event(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: int) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._device_ptrs:
            self.rt.cudaFree(ptr)
        for ptr in self._host_ptrs:
            self.rt.cudaFreeHost(ptr)
        self._device_ptrs, self._host_ptrs = [], []


@dataclass
class StagedBuffers:
    """Device buffer + pinned host staging buffer per tensor, sized for the largest shape one profile allows."""

    device: dict[str, int] = field(default_factory=dict)
    host_ptr: dict[str, int] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)

    @classmethod
    def allocate(cls, cuda: CudaMemory, sizes: Mapping[str, int]) -> "StagedBuffers":
        bufs = cls()
        for name, size in sizes.items():
            bufs.device[name] = cuda.device_alloc(size)
            bufs.host_ptr[name], bufs.host[name] = cuda.host_alloc(size)
            bufs.capacity[name] = size
        return bufs

    def stage_in(self, name: str, array: np.ndarray) -> int:
        size = array.nbytes
        if size > self.capacity[name]:  # cannot happen after select_profile; guards memory safety anyway
            raise InputError(f"input '{name}' needs {size} bytes, its buffer holds {self.capacity[name]}")
        self.host[name][:size] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return size

    def stage_out(self, name: str, shape: Sequence[int], dtype: str) -> np.ndarray:
        size = nbytes(shape, dtype)
        return self.host[name][:size].view(np.dtype(dtype)).reshape(tuple(shape)).copy()


# ---------------------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------------------

def profile_buffer_sizes(io: IOSpec, profile: Mapping[str, InputRange], output_bytes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per tensor for one profile: inputs at the profile's max shape, outputs at the engine's bound."""
    sizes = {t.name: nbytes(profile[t.name].max, t.dtype) for t in io.inputs}
    sizes.update({t.name: int(output_bytes[t.name]) for t in io.outputs})
    return sizes


@dataclass
class _ProfileSlot:
    context: Any
    stream: int
    buffers: StagedBuffers
    events: list[Any]


class TensorRTRunner(Runner):
    """Runs a deserialized engine. One execution context + stream per optimization profile, created on first use;
    each owns device and pinned buffers sized for its profile's max shapes, bound by name once."""

    backend = "tensorrt"

    def __init__(self, trt: Any, traits: LibraryTraits, engine: Any, meta: Mapping[str, Any],
                 cuda: CudaMemory, runtime_cache: Any = None, runtime_cache_path: Path | None = None):
        self._profiles = meta_profiles(meta)
        super().__init__(meta_io(meta), envelope(self._profiles))
        self.backend = traits.flavour.name
        self._trt, self._traits, self._engine, self._cuda = trt, traits, engine, cuda
        self._runtime_cache, self._runtime_cache_path = runtime_cache, runtime_cache_path
        self._slots: dict[int, _ProfileSlot] = {}
        self._lock = threading.Lock()

    def _slot(self, index: int) -> _ProfileSlot:
        slot = self._slots.get(index)
        if slot is not None:
            return slot
        if self._runtime_cache is not None:
            config = self._engine.create_runtime_config()
            config.set_runtime_cache(self._runtime_cache)
            context = self._engine.create_execution_context(config)
        else:
            context = self._engine.create_execution_context()
        if context is None:
            raise BuildError(f"{self._traits.flavour.label} could not create an execution context")
        stream = self._cuda.stream()
        if not context.set_optimization_profile_async(index, stream):
            raise BuildError(f"could not select optimization profile {index}")
        profile = self._profiles[index]
        for name, rng in profile.items():
            context.set_input_shape(name, tuple(rng.max))
        out_bytes = {}
        for spec in self.io.outputs:
            bound = int(context.get_max_output_size(spec.name)) if hasattr(context, "get_max_output_size") else -1
            if bound <= 0:
                shape = tuple(context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise BuildError(f"output '{spec.name}' has a data-dependent shape; not supported by this runner")
                bound = nbytes(shape, spec.dtype)
            out_bytes[spec.name] = bound
        buffers = StagedBuffers.allocate(self._cuda, profile_buffer_sizes(self.io, profile, out_bytes))
        for name, ptr in buffers.device.items():
            context.set_tensor_address(name, ptr)
        slot = _ProfileSlot(context, stream, buffers, [self._cuda.event() for _ in range(4)])
        self._slots[index] = slot
        return slot

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = select_profile(self._profiles, {n: a.shape for n, a in feeds.items()})
        with self._lock:
            slot = self._slot(index)
            cuda, ctx, stream, bufs, ev = self._cuda, slot.context, slot.stream, slot.buffers, slot.events
            cuda.record(ev[0], stream)
            for name, arr in feeds.items():
                ctx.set_input_shape(name, arr.shape)
                cuda.h2d(bufs.device[name], bufs.host_ptr[name], bufs.stage_in(name, arr), stream)
            cuda.record(ev[1], stream)
            if not ctx.execute_async_v3(stream):
                raise BuildError(f"{self._traits.flavour.label} execute_async_v3 failed")
            cuda.record(ev[2], stream)
            shapes = {t.name: tuple(ctx.get_tensor_shape(t.name)) for t in self.io.outputs}
            for spec in self.io.outputs:
                cuda.d2h(bufs.host_ptr[spec.name], bufs.device[spec.name], nbytes(shapes[spec.name], spec.dtype), stream)
            cuda.record(ev[3], stream)
            cuda.synchronize(stream)
            out = {t.name: bufs.stage_out(t.name, shapes[t.name], t.dtype) for t in self.io.outputs}
            self.last_timings.update(h2d=cuda.elapsed_ms(ev[0], ev[1]), compute=cuda.elapsed_ms(ev[1], ev[2]),
                                     d2h=cuda.elapsed_ms(ev[2], ev[3]), profile=float(index))
        return out

    def close(self) -> None:
        with self._lock:
            if self._runtime_cache is not None and self._runtime_cache_path is not None:
                try:
                    _atomic_write_bytes(self._runtime_cache_path, memoryview(self._runtime_cache.serialize()).tobytes())
                except Exception as exc:
                    log.warning("could not save the TensorRT-RTX runtime cache: %s", exc)
                self._runtime_cache = None
            for slot in self._slots.values():
                slot.context = None
            self._slots.clear()
            self._engine = None
            if self._cuda is not None:
                self._cuda.close()


# ---------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------

class TensorRTBackend(Backend):
    """Full TensorRT 10.x / 11.x."""

    name = "tensorrt"
    device = "gpu"
    flavour: Flavour = TENSORRT

    def _library(self) -> tuple[Any | None, str | None]:
        return import_library(self.flavour)

    def unavailable_reason(self) -> str | None:
        from ppdeploy.core.device import gpu_info

        trt, reason = self._library()
        if trt is None:
            return reason
        gpus = gpu_info()
        if not gpus:
            return f"no GPU: {self.flavour.label} {trt.__version__} is installed but no NVIDIA GPU is visible (nvidia-smi)"
        problem = traits_of(self.flavour, trt).cc_problem(str(gpus[0].get("compute_capability", "")))
        if problem:
            return f"unsupported GPU: {gpus[0].get('name')}: {problem}"
        if _import_cudart() is None:
            return "library missing: cuda-python is not installed (pip install cuda-python); the runner needs it"
        return None

    def version(self) -> str:
        trt, reason = self._library()
        if trt is None:
            raise BuildError(reason or "unavailable")
        return str(trt.__version__)

    def key_parts(self, options: BuildOptions | None = None) -> dict[str, Any]:
        """Library name + version and the builder settings that shape the engine (defaults resolved, so changing a
        default in a later ppdeploy also changes the key). The lead adds device.identity("gpu")."""
        parts = {"backend": self.name, "library": self.flavour.module, "version": self.version()}
        trt, _ = self._library()
        if trt is not None and hasattr(trt, "get_nv_onnx_parser_version"):
            parts["onnx_parser"] = int(trt.get_nv_onnx_parser_version())
        if options is not None:
            parts["builder"] = BuilderSettings.from_options(options).engine_key()
        return parts

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        build_engine(self.flavour, Path(model_path), Path(out_dir), options)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        trt, reason = self._library()
        if trt is None:
            raise BuildError(reason or "unavailable")
        traits = traits_of(self.flavour, trt)
        meta = read_meta(artifact_dir)
        engine_bytes = (Path(artifact_dir) / ENGINE_FILE).read_bytes()
        cuda = CudaMemory()
        logger = _make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            cuda.close()
            detail = "; ".join(logger.errors[-3:]) or "no error was logged"
            # BuildError lets the caller drop the cache entry, rebuild once, then fall back along the chain.
            raise BuildError(f"{traits.flavour.label} {traits.version} could not deserialize {artifact_dir}: {detail}")
        settings = BuilderSettings.from_options(options)
        cache = cache_path = None
        if traits.runtime_cache and settings.runtime_cache:
            cache_path = aux_cache_path(Path(artifact_dir), "runtime", traits)
            cache = engine.create_runtime_config().create_runtime_cache()
            if cache_path.is_file() and not cache.deserialize(cache_path.read_bytes()):
                log.info("ignoring stale TensorRT-RTX runtime cache %s (other version or GPU)", cache_path)
        runner = TensorRTRunner(trt, traits, engine, meta, cuda, cache, cache_path)
        runner._runtime = runtime  # the engine must not outlive its runtime
        return runner


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT for RTX: strongly typed, JIT-compiles kernels at run time (runtime cache), no timing cache."""

    name = "tensorrt-rtx"
    flavour = TENSORRT_RTX
