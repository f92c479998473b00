from ppdeploy.precision.build import (  # noqa: F401
    apply,
    PrecisionResult,
    CalibrationSet,
    GateReport,
    OutputGate,
    TaskGate,
    TaskMetric,
    PRECISIONS,
    METHODS,
    DEFAULT_MAX_LOSS,
)

__all__ = ['apply', 'PrecisionResult', 'CalibrationSet', 'GateReport', 'OutputGate', 'TaskGate', 'TaskMetric', 'PRECISIONS', 'METHODS', 'DEFAULT_MAX_LOSS']
