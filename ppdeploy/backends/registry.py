"""`BACKENDS`: every engine ppdeploy can build for, in the order `--backend auto` tries them.

One line per backend. The class is imported only when the backend is asked for, so a missing optional library is
`unavailable_reason()`, not an ImportError at start. What a backend can do (precisions, formats, native INT8
quantizer, device) is data on its class: callers ask the class, never compare names.
"""
from __future__ import annotations

from ppdeploy.backends.base import Backend
from ppdeploy.core.errors import BackendUnavailable
from ppdeploy.core.registry import Registry

BACKENDS: Registry[type[Backend]] = Registry("backend", BackendUnavailable)
BACKENDS.register("tensorrt", "ppdeploy.backends.tensorrt.backend:TensorRTBackend", aliases=("trt",))
BACKENDS.register("tensorrt-rtx", "ppdeploy.backends.tensorrt.backend:TensorRTRTXBackend")
BACKENDS.register("onnxruntime-cuda", "ppdeploy.backends.onnxruntime_cuda.backend:OnnxRuntimeCUDABackend",
                  aliases=("ort-cuda", "cuda"))
BACKENDS.register("openvino", "ppdeploy.backends.openvino.backend:OpenVINOBackend", aliases=("ov",))
BACKENDS.register("onnxruntime", "ppdeploy.backends.onnxruntime:OnnxRuntimeBackend", aliases=("ort",))
BACKENDS.register("paddle", "ppdeploy.backends.paddle:PaddleBackend", aliases=("paddle-inference",))


def canonical(name: str) -> str:
    """The registered name for `name` or an alias of it (BackendUnavailable listing the choices otherwise)."""
    return BACKENDS.canonical(name)


def get_backend(name: str) -> Backend:
    """A fresh instance of the backend `name`."""
    return BACKENDS.get(name)()
