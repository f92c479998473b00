"""`CudaSettings`: the switches of the onnxruntime-cuda backend (BuildOptions.extra), with their defaults, and the
execution providers they give. Why the defaults: bench/gpu/README.md ("onnxruntime-cuda: why these defaults")."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.errors import BuildError

PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True)
class CudaSettings:
    device_id: int = 0
    use_tf32: bool = False
    cuda_graph: bool = False  # needs fixed input shapes: the graph replays the same kernels on the same buffers
    # EXHAUSTIVE (ORT's own default) benchmarks every cuDNN algorithm once per new input shape: a slow first call
    # per shape, but HEURISTIC picked far slower algorithms for PP-OCRv4 rec (bench/gpu/README.md).
    conv_algo_search: str = "EXHAUSTIVE"
    gpu_mem_limit_mib: int | None = None
    # Shape slots kept (LRU): session (if per shape) + IO binding + device buffers. Each session holds its own
    # cuBLAS/cuDNN handles and memory arena, and too many of them exhaust the GPU (bench/gpu/README.md).
    max_cached_shapes: int = 8
    # ORT's TensorRT execution provider in front of CUDA (needs libnvinfer 10 on the library path). Its engines and
    # timing cache go to `trt_cache_dir` (default: beside the artifact). Never run here: no libnvinfer anywhere.
    tensorrt_provider: bool = False
    trt_cache_dir: str | None = None
    session_per_shape: bool = True  # see OnnxRuntimeCUDARunner: avoids re-planning on every shape change
    batch_buckets: bool = True  # pad dynamic batch dims to powers of two (outputs sliced back)
    # At load, run the profile's opt shape at every batch bucket up to its max batch, so sessions exist and cuDNN
    # has chosen its algorithms before the first request (a first shape is slow: bench/gpu/README.md).
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
