"""Reduced precision at the ONNX level, gated against FP32: `apply` (build.py), the PRECISIONS and QUANTIZERS
registries, calibration data and gates."""
from ppdeploy.precision.build import DEFAULT_MAX_LOSS, METHODS, PrecisionResult, apply
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import GateReport, OutputGate, TaskGate, TaskMetric
from ppdeploy.precision.quantizer import Quantizer
from ppdeploy.precision.registry import (
           DEFAULT_QUANTIZER,
           PRECISIONS,
           QUANTIZERS,
           Precision,
)

__all__ = ["apply", "PrecisionResult", "CalibrationSet", "GateReport", "OutputGate", "TaskGate", "TaskMetric",
           "PRECISIONS", "Precision", "QUANTIZERS", "Quantizer", "DEFAULT_QUANTIZER", "METHODS", "DEFAULT_MAX_LOSS"]
