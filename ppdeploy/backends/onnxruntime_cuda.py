"""ONNX Runtime with the CUDA execution provider (the `onnxruntime-gpu` package).

The artifact is the ONNX file itself: ORT's optimized graphs are tied to the execution provider that produced them,
and this one can only be produced with a GPU present, so optimization happens at load (well under a second for the
OCR models). Inference goes through IO binding: per input-shape bucket there is one ORT session with its own
binding and device buffers, reused by every call of that shape, so a steady stream of same-shaped requests does one
host->device copy per input, the kernels, and one device->host copy per output. Why a session per shape, batch
buckets and the optional `pad_multiple` shape buckets: see OnnxRuntimeCUDARunner (ORT re-plans every convolution
on each shape change, 60-680 ms on the H100). With `cuda_graph=True` (fixed shapes only) ORT captures the kernels
into a CUDA graph and replays it.

TF32 is off unless asked for: with it the PP-OCRv4 rec outputs move by up to 8e-3 (measured on the H100, 5e-6 with
it off), an accuracy change the user should opt into, not get by default.

Ran on hardware: onnxruntime-gpu 1.31.1 on an NVIDIA H100 (bench/gpu/README.md; gpu-marked tests in
tests/backends/test_onnxruntime_cuda.py). The shape-slot logic is also tested on CPU through ORT's CPU provider.
The optional TensorRT execution provider never ran (no libnvinfer anywhere available).
"""
from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ppdeploy.backends.base import Backend, BuildOptions, IOSpec, Runner, TensorSpec, dims, numpy_dtype
from ppdeploy.core.errors import BuildError, InputError

ARTIFACT = "model.onnx"
PROVIDER = "CUDAExecutionProvider"
# CUDA 12/13 builds of onnxruntime-gpu ship kernels for Volta (7.0) and newer at best; older GPUs fail at first run.
MIN_COMPUTE_CAPABILITY = 7.0


@dataclass(frozen=True)
class CudaSettings:
    device_id: int = 0
    use_tf32: bool = False
    cuda_graph: bool = False  # needs fixed input shapes: the graph replays the same kernels on the same buffers
    # EXHAUSTIVE (ORT's own default) benchmarks every cuDNN algorithm once per new input shape: a slow first call
    # per shape, but HEURISTIC picked algorithms that made PP-OCRv4 rec at batch 1-4 FP32 ~10x slower on the H100
    # (25 ms vs 3.9 ms at batch 8; bench/gpu/ort_cuda_run1.json).
    conv_algo_search: str = "EXHAUSTIVE"
    gpu_mem_limit_mib: int | None = None
    # Shape slots kept (LRU): session (if per shape) + IO binding + device buffers. Each session holds its own
    # cuBLAS/cuDNN handles and memory arena: with 32 per model, OCR's stream of new shapes exhausted them on the H100
    # ("CUBLAS failure 3: the resource allocation failed", bench/gpu/e2e_ocr_run6.log).
    max_cached_shapes: int = 8
    # ORT's TensorRT execution provider in front of CUDA (needs libnvinfer 10 on the library path). Its engines and
    # timing cache go to `trt_cache_dir` (default: beside the artifact). Never run here: no libnvinfer anywhere.
    tensorrt_provider: bool = False
    trt_cache_dir: str | None = None
    session_per_shape: bool = True  # see OnnxRuntimeCUDARunner: avoids re-planning on every shape change
    batch_buckets: bool = True  # pad dynamic batch dims to powers of two (outputs sliced back)
    # At load, run the profile's opt shape at every batch bucket up to its max batch, so sessions exist and cuDNN
    # has chosen its algorithms before the first request (a first shape costs 0.1-1.3 s on the H100).
    warmup: bool = True
    # Pad input axes up to a multiple, e.g. {"x": {"2": 960, "3": 960}} for det, {"x": {"3": 320}} for rec widths, so
    # a model fed free-form shapes sees a handful of them (see OnnxRuntimeCUDARunner). Zero padding; outputs of the
    # input's rank whose axis equals the padded size are cropped back. Off by default: it changes results slightly
    # (border context), which the accuracy check should judge per model.
    pad_multiple: dict | None = None

    KEYS = ("device_id", "use_tf32", "cuda_graph", "conv_algo_search", "gpu_mem_limit_mib", "max_cached_shapes",
            "tensorrt_provider", "trt_cache_dir", "session_per_shape", "batch_buckets", "warmup", "pad_multiple")

    @classmethod
    def from_options(cls, options: BuildOptions) -> "CudaSettings":
        extra = dict(options.extra or {})
        if "tf32" in extra and "use_tf32" not in extra:
            extra["use_tf32"] = extra["tf32"]
        try:
            settings = cls(**{k: extra[k] for k in cls.KEYS if k in extra})
        except TypeError as exc:
            raise BuildError(f"bad onnxruntime-cuda option: {exc}") from exc
        if settings.conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise BuildError(f"conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, got {settings.conv_algo_search!r}")
        if int(settings.max_cached_shapes) < 1:
            raise BuildError("max_cached_shapes must be >= 1")
        return settings

    def provider_options(self) -> dict[str, str]:
        opts = {
            "device_id": str(int(self.device_id)),
            "use_tf32": "1" if self.use_tf32 else "0",
            "cudnn_conv_algo_search": self.conv_algo_search,
            "enable_cuda_graph": "1" if self.cuda_graph else "0",
            "arena_extend_strategy": "kSameAsRequested",
        }
        if self.gpu_mem_limit_mib:
            opts["gpu_mem_limit"] = str(int(self.gpu_mem_limit_mib) << 20)
        return opts


def libnvinfer_present() -> bool:
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def providers_for(settings: CudaSettings, artifact_dir: Path) -> list:
    """Execution providers in priority order: [TensorRT EP,] CUDA EP, CPU EP (for ops CUDA lacks)."""
    providers: list = []
    if settings.tensorrt_provider:
        cache = settings.trt_cache_dir or str(Path(artifact_dir).parent / "_ort-trt-cache")
        providers.append(("TensorrtExecutionProvider", {
            "device_id": str(int(settings.device_id)), "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache, "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache,
            # precision comes from the ONNX graph, as for ppdeploy's own TensorRT backend
            "trt_fp16_enable": "False", "trt_int8_enable": "False",
        }))
    providers.append((PROVIDER, settings.provider_options()))
    providers.append("CPUExecutionProvider")
    return providers


def io_spec(session) -> IOSpec:
    def spec(t) -> TensorSpec:
        return TensorSpec(t.name, numpy_dtype(t.type), dims(t.shape))

    return IOSpec(tuple(spec(t) for t in session.get_inputs()), tuple(spec(t) for t in session.get_outputs()))


def check_cuda_graph_shapes(io: IOSpec, options: BuildOptions) -> None:
    """CUDA graphs replay fixed kernels on fixed buffers: every input shape must be pinned by the model or profile."""
    loose = []
    for spec in io.inputs:
        rng = options.shapes.ranges.get(spec.name) if options.shapes else None
        fixed_by_profile = rng is not None and rng.min == rng.max
        if spec.dynamic and not fixed_by_profile:
            loose.append(spec.describe())
    if loose:
        raise BuildError(f"cuda_graph needs fixed input shapes, but {', '.join(loose)} can vary",
                         hint="give shapes with min == opt == max for these inputs, or turn cuda_graph off")


def batch_bucket(n: int, limit: int | None) -> int:
    """Next power of two >= n, capped at `limit` (the profile's max batch) and never below n."""
    bucket = 1 << max(0, (n - 1).bit_length())
    if limit is not None:
        bucket = min(bucket, limit)
    return max(bucket, n)


def pad_batch(feeds: dict[str, np.ndarray], batchable: set[str], limit: int | None) -> tuple[dict[str, np.ndarray], int]:
    """Zero-pad the batch dim of the batchable inputs up to its bucket; returns (feeds, real batch)."""
    sizes = {a.shape[0] for n, a in feeds.items() if n in batchable}
    if len(sizes) != 1:
        return feeds, -1  # no common batch dim: leave the request alone
    n = sizes.pop()
    target = batch_bucket(n, limit)
    if target == n:
        return feeds, n
    out = {}
    for name, arr in feeds.items():
        if name in batchable:
            padded = np.zeros((target, *arr.shape[1:]), arr.dtype)
            padded[:n] = arr
            out[name] = padded
        else:
            out[name] = arr
    return out, n


def pad_axes(feeds: dict[str, np.ndarray], multiples: dict) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Zero-pad the listed axes of each input up to a multiple; returns (feeds, original shapes of padded inputs)."""
    out, originals = dict(feeds), {}
    for name, axes in (multiples or {}).items():
        arr = feeds.get(name)
        if arr is None:
            continue
        target = list(arr.shape)
        for axis, multiple in axes.items():
            a, m = int(axis), int(multiple)
            target[a] = -(-arr.shape[a] // m) * m
        if tuple(target) != arr.shape:
            padded = np.zeros(target, arr.dtype)
            padded[tuple(slice(0, d) for d in arr.shape)] = arr
            out[name] = padded
            originals[name] = arr.shape
    return out, originals


def crop_outputs(outputs: dict[str, np.ndarray], padded: dict[str, np.ndarray], originals: dict[str, tuple]) -> dict:
    """Undo pad_axes on outputs shaped like a padded input (same rank, the padded extent on that axis)."""
    if not originals:
        return outputs
    out = {}
    for name, value in outputs.items():
        index = [slice(None)] * value.ndim
        for inp, orig in originals.items():
            full = padded[inp].shape
            if value.ndim != len(full):
                continue
            for axis in range(1, value.ndim):
                if full[axis] != orig[axis] and value.shape[axis] == full[axis]:
                    index[axis] = slice(0, orig[axis])
        out[name] = value[tuple(index)]
    return out


class _ShapeSlot:
    """Everything bound for one input-shape bucket: its session, IO binding, device input buffers and (after the
    first run) the device output buffers ORT allocated, all reused by every later call with this shape."""

    def __init__(self, session, inputs: dict[str, Any]):
        self.session = session
        self.binding = session.io_binding()
        self.inputs = inputs
        self.outputs: list[Any] | None = None


class OnnxRuntimeCUDARunner(Runner):
    """IO-binding runner. Why a session per input shape (`session_per_shape`, default on): measured on the H100
    (bench/gpu/shape_probe*.json), ORT's CUDA EP re-plans every convolution whenever a node sees a shape different
    from its previous call — 60-680 ms per switch depending on the cuDNN search mode, even for shapes it has seen
    before — while a repeated shape runs in 1-3 ms. One session per shape keeps every node on one shape; sessions
    share nothing but GPU memory (weights are a few MB). Batch sizes are padded up to powers of two
    (`batch_buckets`) so a dynamic batcher produces a handful of shapes, not one per batch size."""

    backend = "onnxruntime-cuda"

    def __init__(self, make_session: Callable[[], Any], options: BuildOptions, settings: CudaSettings,
                 device: str = "cuda"):
        first = make_session()
        super().__init__(io_spec(first), options.shapes)
        self._make_session = make_session
        self._spare: Any | None = first  # serves the first shape, so a single-shape model creates one session
        self._settings = settings
        self._device = device
        self._slots: OrderedDict[tuple, _ShapeSlot] = OrderedDict()
        self._graph_shape: tuple | None = None
        self._lock = threading.Lock()
        self.sessions_created = 1
        batchable = {t.name for t in self.io.inputs if t.shape and t.shape[0] is None}
        outputs_batched = all(t.shape and t.shape[0] is None for t in self.io.outputs)
        self._batchable = batchable if settings.batch_buckets and outputs_batched else set()
        limits = [options.shapes.ranges[n].max[0] for n in batchable if options.shapes and n in options.shapes.ranges]
        self._batch_limit = min(limits) if limits else None

    def _slot(self, key: tuple, feeds: dict[str, np.ndarray]) -> _ShapeSlot:
        import onnxruntime as ort

        found = self._slots.get(key)
        if found is not None:
            self._slots.move_to_end(key)
            return found
        if self._spare is not None:
            session, self._spare = self._spare, None
        elif self._settings.session_per_shape:
            session = self._make_session()
            self.sessions_created += 1
        else:
            session = next(iter(self._slots.values())).session
        dev = int(self._settings.device_id)
        inputs = {n: ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, self._device, dev)
                  for n, a in feeds.items()}
        found = self._slots[key] = _ShapeSlot(session, inputs)
        while len(self._slots) > int(self._settings.max_cached_shapes):
            self._slots.popitem(last=False)
        return found

    def _bind(self, slot: _ShapeSlot) -> None:
        b = slot.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, value in slot.inputs.items():
            b.bind_ortvalue_input(name, value)
        if slot.outputs is None:  # first run at this shape: ORT allocates the outputs on the device; we keep them
            for name in self.output_names:
                b.bind_output(name, self._device, int(self._settings.device_id))
        else:
            for name, value in zip(self.output_names, slot.outputs):
                b.bind_ortvalue_output(name, value)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            t0 = time.perf_counter()
            feeds, real = pad_batch(feeds, self._batchable, self._batch_limit) if self._batchable else (feeds, -1)
            feeds, originals = pad_axes(feeds, self._settings.pad_multiple) if self._settings.pad_multiple else (feeds, {})
            key = tuple((n, a.shape, a.dtype.str) for n, a in sorted(feeds.items()))
            if self._settings.cuda_graph:
                if self._graph_shape is None:
                    self._graph_shape = key
                elif key != self._graph_shape:
                    raise InputError(f"this runner replays a CUDA graph captured for {self._graph_shape}; got {key}",
                                     hint="use fixed-size inputs or load without cuda_graph")
            slot = self._slot(key, feeds)
            for name, arr in feeds.items():
                slot.inputs[name].update_inplace(arr)  # synchronous host->device copy into the reused buffer
            t1 = time.perf_counter()
            first = slot.outputs is None
            self._bind(slot)
            try:
                slot.session.run_with_iobinding(slot.binding)  # returns after the stream is synchronized
            except RuntimeError:
                if not (first and len(self._slots) > 1):
                    raise
                # Out of GPU resources while starting a new shape: release every other slot's session, retry once.
                import gc

                for other in [k for k in self._slots if k != key]:
                    del self._slots[other]
                gc.collect()
                slot.session.run_with_iobinding(slot.binding)
            t2 = time.perf_counter()
            values = slot.binding.get_outputs()
            if first:
                slot.outputs = list(values)
            out = {name: value.numpy() for name, value in zip(self.output_names, values)}
            out = crop_outputs(out, feeds, originals)
            if real >= 0:
                out = {k: (v[:real] if v.ndim and v.shape[0] == feeds_batch(feeds, self._batchable) else v)
                       for k, v in out.items()}
            t3 = time.perf_counter()
        self.last_timings.update(h2d=(t1 - t0) * 1e3, compute=(t2 - t1) * 1e3, d2h=(t3 - t2) * 1e3)
        return out

    def warm_up(self, profile) -> list[tuple[int, ...]]:
        """Run zeros at the profile's opt shape for each batch bucket up to its max batch; returns the shapes run.
        Does nothing unless the profile covers every input."""
        names = [t.name for t in self.io.inputs]
        if not profile or any(n not in profile.ranges for n in names):
            return []
        ranges = {n: profile.ranges[n] for n in names}
        batches = [ranges[names[0]].opt[0]]
        if self._batchable:
            top = min(r.max[0] for n, r in ranges.items() if n in self._batchable)
            low = max(r.min[0] for n, r in ranges.items() if n in self._batchable)
            # Only batches the profile admits: a fixed profile (min = max, e.g. for CUDA graphs) warms that one.
            batches = sorted({batch_bucket(b, top) for b in (1 << i for i in range(top.bit_length() + 1)) if b <= top}
                             | {top})
            batches = [b for b in batches if b >= low] or [top]
        done = []
        dtypes = {t.name: t.dtype for t in self.io.inputs}
        for b in batches:
            feeds = {n: np.zeros((b, *r.opt[1:]) if n in self._batchable else r.opt, dtypes[n]) for n, r in ranges.items()}
            self.infer(feeds)
            done.append(tuple(feeds[names[0]].shape))
        return done

    @property
    def _sets(self) -> OrderedDict:  # buffer sets by shape (kept for tests and benchmarks)
        return self._slots

    def close(self) -> None:
        with self._lock:
            self._slots.clear()
            self._spare = None


def feeds_batch(feeds: dict[str, np.ndarray], batchable: set[str]) -> int:
    return next(a.shape[0] for n, a in feeds.items() if n in batchable)


def _cuda_available(ort) -> bool:
    return PROVIDER in ort.get_available_providers()


def _preload_cuda_libraries(ort) -> None:
    """onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* pip packages; without them it relies on the
    system's libraries. Failing here is fine: session creation below reports what is really missing."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:
            pass


class OnnxRuntimeCUDABackend(Backend):
    name = "onnxruntime-cuda"
    device = "gpu"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "library missing: onnxruntime-gpu is not installed (pip install onnxruntime-gpu)"
        import onnxruntime as ort

        if not _cuda_available(ort):
            return (f"library missing: onnxruntime {ort.__version__} has no CUDAExecutionProvider (it is the CPU "
                    "build; pip uninstall onnxruntime && pip install onnxruntime-gpu)")
        from ppdeploy.core.device import gpu_info

        gpus = gpu_info()
        if not gpus:
            return f"no GPU: onnxruntime-gpu {ort.__version__} is installed but no NVIDIA GPU is visible (nvidia-smi)"
        cc = str(gpus[0].get("compute_capability", ""))
        try:
            if float(cc) < MIN_COMPUTE_CAPABILITY:
                return (f"unsupported GPU: {gpus[0].get('name')} has compute capability {cc}; onnxruntime-gpu's CUDA "
                        f"kernels need >= {MIN_COMPUTE_CAPABILITY}")
        except ValueError:
            pass
        return None

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def key_parts(self, options: BuildOptions | None = None) -> dict[str, Any]:
        parts: dict[str, Any] = {"backend": self.name, "library": "onnxruntime-gpu", "version": self.version()}
        if options is not None:
            s = CudaSettings.from_options(options)
            # Only what changes the artifact or its numerics; the buffer cache size does not.
            parts["cuda"] = {"use_tf32": s.use_tf32, "cuda_graph": s.cuda_graph, "conv_algo_search": s.conv_algo_search,
                             "tensorrt_provider": s.tensorrt_provider, "batch_buckets": s.batch_buckets,
                             "pad_multiple": s.pad_multiple}
        return parts

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        import onnx

        CudaSettings.from_options(options)  # reject bad options at build time, not at first inference
        try:
            onnx.checker.check_model(str(model_path))
        except Exception as exc:
            raise BuildError(f"{model_path} is not a valid ONNX model: {exc}") from exc
        shutil.copyfile(model_path, Path(out_dir) / ARTIFACT)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        import onnxruntime as ort

        reason = self.unavailable_reason()
        if reason:
            raise BuildError(f"onnxruntime-cuda cannot run here: {reason}")
        settings = CudaSettings.from_options(options)
        _preload_cuda_libraries(ort)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if settings.tensorrt_provider and not libnvinfer_present():
            raise BuildError("tensorrt_provider=True but libnvinfer (TensorRT 10/11) is not on the library path",
                             hint="install TensorRT (pip install tensorrt) or drop tensorrt_provider")
        providers = providers_for(settings, Path(artifact_dir))
        path = str(Path(artifact_dir) / ARTIFACT)

        def make_session():
            try:
                session = ort.InferenceSession(path, so, providers=providers)
            except Exception as exc:
                raise BuildError(f"onnxruntime-cuda could not load {artifact_dir}: {exc}") from exc
            if settings.tensorrt_provider and "TensorrtExecutionProvider" not in session.get_providers():
                raise BuildError("onnxruntime could not start its TensorRT execution provider (see ORT's log)")
            if PROVIDER not in session.get_providers():
                # ORT silently drops to CPU when libcudart/cuDNN fail to load; a "GPU" runner on the CPU is a lie.
                raise BuildError("onnxruntime created the session without CUDAExecutionProvider (CUDA or cuDNN "
                                 "libraries failed to load; run with ORT logging at level 0 to see which)")
            return session

        runner = OnnxRuntimeCUDARunner(make_session, options, settings)
        if settings.cuda_graph:
            check_cuda_graph_shapes(runner.io, options)
        if settings.warmup:
            runner.warm_up(options.shapes)
        return runner
