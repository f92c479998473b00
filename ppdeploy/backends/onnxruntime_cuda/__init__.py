"""onnxruntime-cuda: settings, shape buckets, the IO-binding runner, the backend."""
from ppdeploy.backends.onnxruntime_cuda.backend import (
                                                       ARTIFACT,
                                                       MIN_COMPUTE_CAPABILITY,
                                                       OnnxRuntimeCUDABackend,
)
from ppdeploy.backends.onnxruntime_cuda.runner import OnnxRuntimeCUDARunner, io_spec
from ppdeploy.backends.onnxruntime_cuda.settings import (
                                                       PROVIDER,
                                                       CudaSettings,
                                                       libnvinfer_present,
                                                       providers_for,
)
from ppdeploy.backends.onnxruntime_cuda.shapes import (
                                                       batch_bucket,
                                                       check_cuda_graph_shapes,
                                                       crop_outputs,
                                                       feeds_batch,
                                                       pad_axes,
                                                       pad_batch,
)

__all__ = ["ARTIFACT", "MIN_COMPUTE_CAPABILITY", "OnnxRuntimeCUDABackend", "OnnxRuntimeCUDARunner", "io_spec",
           "PROVIDER", "CudaSettings", "libnvinfer_present", "providers_for", "batch_bucket",
           "check_cuda_graph_shapes", "crop_outputs", "feeds_batch", "pad_axes", "pad_batch"]
