"""ONNX Runtime with the CUDA execution provider (the `onnxruntime-gpu` package).

The artifact is the ONNX file itself: ORT's optimized graphs are tied to the execution provider that produced them,
and this one can only be produced with a GPU present, so optimization happens at load (well under a second for the
OCR models). Inference goes through IO binding, one session per input-shape bucket (runner.py); with
`cuda_graph=True` (fixed shapes only) ORT captures the kernels into a CUDA graph and replays it. TF32 is off unless
asked for: it moves outputs visibly, an accuracy change the user should opt into. Measurements behind these choices
and what ran on which hardware: bench/gpu/README.md.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.backends.onnxruntime_cuda.runner import OnnxRuntimeCUDARunner
from ppdeploy.backends.onnxruntime_cuda.settings import (
    PROVIDER,
    CudaSettings,
    libnvinfer_present,
    providers_for,
)
from ppdeploy.backends.onnxruntime_cuda.shapes import check_cuda_graph_shapes
from ppdeploy.core.device import gpu_info
from ppdeploy.core.errors import BuildError
from ppdeploy.core.lazy import lazy_import

onnx = lazy_import("onnx", install="onnx")
ort = lazy_import("onnxruntime", install="onnxruntime-gpu")

ARTIFACT = "model.onnx"
# CUDA 12/13 builds of onnxruntime-gpu ship kernels for Volta (7.0) and newer at best; older GPUs fail at first run.
MIN_COMPUTE_CAPABILITY = 7.0


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
    precisions = frozenset({"fp32", "fp16", "int8"})
    int8_quantizer = "onnxruntime"
    triton_platform = "onnxruntime_onnx"
    device = "gpu"
    replans_per_shape = True

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "library missing: onnxruntime-gpu is not installed (pip install 'ppdeploy[gpu]')"
        if not _cuda_available(ort):
            return (f"library missing: onnxruntime {ort.__version__} has no CUDAExecutionProvider (it is the CPU "
                    "build; pip uninstall onnxruntime && pip install onnxruntime-gpu)")
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
        CudaSettings.from_options(options)  # reject bad options at build time, not at first inference
        try:
            onnx.checker.check_model(str(model_path))
        except Exception as exc:
            raise BuildError(f"{model_path} is not a valid ONNX model: {exc}") from exc
        shutil.copyfile(model_path, Path(out_dir) / ARTIFACT)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
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
