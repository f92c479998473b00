from ppdeploy.convert.pipeline import (  # noqa: F401
    CONVERSIONS,
    ONNX_FILE,
    WORKER_TIMEOUT_S,
    ConversionResult,
    to_onnx,
)

__all__ = ['ONNX_FILE', 'WORKER_TIMEOUT_S', 'CONVERSIONS', 'ConversionResult', 'to_onnx']
