"""Accuracy gates: is a reduced-precision candidate close enough to the FP32 reference?

A gate scores a runner (higher is better, in [0, 1]); the loss of a candidate is the reference's score
minus the candidate's. Two kinds:

- `OutputGate`: agreement of the model's outputs with FP32 on held-out samples (`compare.agreement`).
- `TaskGate`: a task metric over a whole pipeline, given as a callable that takes the candidate model's
  `Runner` and returns the score (e.g. OCR page character accuracy with this model swapped in). This is
  the gate that matters for OCR; the output gate is its cheap proxy when searching what to exclude.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import AccuracyError
from ppdeploy.precision import compare
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.runners import candidate_runner, ort_runner

log = logging.getLogger("ppdeploy.precision.build")

TaskMetric = Callable[[Runner], float]


@dataclass
class GateReport:
    gate: str  # "outputs" or the task metric's name
    metric: str
    data: str
    reference: float
    candidate: float
    loss: float
    max_loss: float
    passed: bool
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def error(self, message: str, hint: str | None = None) -> AccuracyError:
        """The AccuracyError for a failed build; carries this report as `.report`."""
        err = AccuracyError(f"{message}: {self.summary()}", hint=hint)
        err.report = self.to_dict()
        return err

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict} {self.gate}/{self.metric}: reference {self.reference:.4f}, candidate {self.candidate:.4f}, "
                f"loss {self.loss:.4f} (max {self.max_loss:.4f}) on {self.data}")


class Gate:
    name = "gate"
    metric = "?"

    def __init__(self, reference_onnx: Path, max_loss: float):
        self.reference_onnx = Path(reference_onnx)
        self.max_loss = float(max_loss)
        self.evaluations = 0  # how many candidates were judged: the searches report their cost with it

    def score(self, runner: Runner) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def reference_score(self) -> float:
        raise NotImplementedError

    @property
    def data(self) -> str:
        return "?"

    def evaluate(self, candidate_onnx: Path, backend_hint: str | None = None,
                 backend_extra: dict | None = None) -> GateReport:
        """backend_extra: build switches of the candidate's backend (e.g. OpenVINO's keep_fp32 regions)."""
        start = time.perf_counter()
        runner = candidate_runner(Path(candidate_onnx), backend_hint, extra=backend_extra)
        try:
            cand, details = self.score(runner)
        finally:
            runner.close()
        self.evaluations += 1
        ref = self.reference_score()
        loss = max(0.0, ref - cand)
        report = GateReport(self.name, self.metric, self.data, ref, cand, loss, self.max_loss,
                            loss <= self.max_loss, round(time.perf_counter() - start, 3), details)
        log.info("gate: %s", report.summary())
        return report


class OutputGate(Gate):
    """Agreement of outputs with the FP32 reference on `samples` (held out from calibration)."""

    name = "outputs"

    def __init__(self, reference_onnx: Path, samples: CalibrationSet, max_loss: float, metric: str = "auto"):
        super().__init__(reference_onnx, max_loss)
        if metric not in compare.METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {compare.METRICS}")
        self.samples = samples
        self.metric = metric
        self._reference_outputs: list[dict] | None = None

    @property
    def data(self) -> str:
        return self.samples.source

    def reference_outputs(self) -> list[dict]:
        if self._reference_outputs is None:
            runner = ort_runner(self.reference_onnx)
            try:
                self._reference_outputs = [runner.infer(s) for s in self.samples]
            finally:
                runner.close()
            if self.metric == "auto":
                picked = {compare.pick_metric(v, k) for k, v in self._reference_outputs[0].items()}
                self.metric = "+".join(sorted(picked))
        return self._reference_outputs

    def reference_score(self) -> float:
        return 1.0

    def run(self, runner: Runner) -> list[dict]:
        return [runner.infer(s) for s in self.samples]

    def score(self, runner: Runner) -> tuple[float, dict[str, Any]]:
        refs = self.reference_outputs()
        metric = "auto" if "+" in self.metric or self.metric == "auto" else self.metric
        result = compare.agreement(refs, self.run(runner), metric)
        return result["agreement"], result["outputs"]


class TaskGate(Gate):
    """A task metric over a pipeline: `metric(runner) -> score` with the candidate's runner swapped in."""

    def __init__(self, reference_onnx: Path, metric_fn: TaskMetric, max_loss: float, name: str = "task",
                 data: str = "task data"):
        super().__init__(reference_onnx, max_loss)
        self.metric_fn = metric_fn
        self.name = name
        self.metric = name
        self._data = data
        self._reference: float | None = None

    @property
    def data(self) -> str:
        return self._data

    def reference_score(self) -> float:
        if self._reference is None:
            runner = ort_runner(self.reference_onnx)
            try:
                self._reference = float(self.metric_fn(runner))
            finally:
                runner.close()
        return self._reference

    def score(self, runner: Runner) -> tuple[float, dict[str, Any]]:
        return float(self.metric_fn(runner)), {}
