"""Backend registry. Modules are imported only when a backend is asked for, so `import ppdeploy` stays fast
and a missing optional library is a reason string, not an ImportError."""
from __future__ import annotations

import importlib

from ppdeploy.backends.base import Backend, BuildOptions, IOSpec, Runner, TensorSpec
from ppdeploy.core.errors import BackendUnavailable

# name -> "module:Class". Order here is the default fallback chain for --backend auto.
REGISTRY: dict[str, str] = {
    "tensorrt": "ppdeploy.backends.tensorrt.backend:TensorRTBackend",
    "tensorrt-rtx": "ppdeploy.backends.tensorrt.backend:TensorRTRTXBackend",
    "onnxruntime-cuda": "ppdeploy.backends.onnxruntime_cuda:OnnxRuntimeCUDABackend",
    "openvino": "ppdeploy.backends.openvino.backend:OpenVINOBackend",
    "onnxruntime": "ppdeploy.backends.onnxruntime:OnnxRuntimeBackend",
    "paddle": "ppdeploy.backends.paddle:PaddleBackend",
}

ALIASES = {"ort": "onnxruntime", "ov": "openvino", "trt": "tensorrt", "ort-cuda": "onnxruntime-cuda",
           "paddle-inference": "paddle", "cuda": "onnxruntime-cuda"}


def canonical(name: str) -> str:
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend '{name}'", hint=f"choose from {', '.join(REGISTRY)} or auto")
    return name


def get_backend(name: str) -> Backend:
    name = canonical(name)
    module_name, cls_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # the ppdeploy module itself is missing: a packaging bug, say so
        raise BackendUnavailable(f"backend '{name}' is not part of this ppdeploy build ({exc})") from exc
    return getattr(module, cls_name)()


__all__ = ["Backend", "BuildOptions", "IOSpec", "Runner", "TensorSpec", "REGISTRY", "canonical", "get_backend"]
