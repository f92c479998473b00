"""`PRECISIONS`: every numeric precision ppdeploy builds, with what it is and how much accuracy it may cost;
`QUANTIZERS`: every INT8 quantizer, one module each under precision/quantizers/ and one line here (modelled on
ONNX Runtime's quantization registry).

Every list of precisions (CLI choices, the model config schema, load_model's check, the cache key) comes from here.
A backend says on its class which precisions it runs (`Backend.precisions`) and which quantizer is native to it
(`Backend.int8_quantizer`); `ppdeploy.deploy.quantizer_for` resolves "auto" from that.
"""
from __future__ import annotations

from dataclasses import dataclass

from ppdeploy.core.errors import InputError
from ppdeploy.core.registry import Registry
from ppdeploy.precision.quantizer import Quantizer


@dataclass(frozen=True)
class Precision:
    """One precision."""

    name: str
    # "reference": the FP32 graph as converted; "graph": a rewrite of the ONNX graph (FP16, INT8 Q/DQ);
    # "backend": a setting the backend applies when it compiles (BF16 as OpenVINO's inference precision).
    kind: str
    # Default accuracy budget, in points of agreement with FP32 (0.005 = half a point); None for the reference.
    max_loss: float | None
    needs_calibration: bool = False


PRECISIONS: Registry[Precision] = Registry("precision", InputError)
PRECISIONS.register("fp32", Precision("fp32", "reference", None))
PRECISIONS.register("fp16", Precision("fp16", "graph", 0.005))
PRECISIONS.register("bf16", Precision("bf16", "backend", 0.005))
PRECISIONS.register("int8", Precision("int8", "graph", 0.01, needs_calibration=True))

QUANTIZERS: Registry[Quantizer] = Registry("quantizer", InputError)
QUANTIZERS.register("onnxruntime", "ppdeploy.precision.quantizers.onnxruntime:QUANTIZER")
QUANTIZERS.register("openvino", "ppdeploy.precision.quantizers.openvino:QUANTIZER")
QUANTIZERS.register("openvino-bf16", "ppdeploy.precision.quantizers.openvino_bf16:QUANTIZER")

# The quantizer of an "auto" choice whose backend's own one is missing: a QDQ graph every ONNX backend runs.
DEFAULT_QUANTIZER = "onnxruntime"
