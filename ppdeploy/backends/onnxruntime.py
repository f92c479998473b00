"""ONNX Runtime on the CPU. The artifact is the ONNX file after ORT's offline graph optimization, so a cached
start skips both conversion and ORT's own optimization pass."""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.core.errors import BuildError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.core.tensors import IOSpec, TensorSpec, dims, numpy_dtype

ort = lazy_import("onnxruntime", install="onnxruntime")

ARTIFACT = "model.ort.onnx"


def session_options(options: BuildOptions, optimized_out: Path | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.resolved_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not options.extra.get("spin", False):
        # ORT's idle workers spin after each run by default, taking the CPU from whatever runs next on the same cores
        # (the task's own Python, another runtime, the server's event loop); the OCR pipeline ran faster with
        # spinning off (BENCHMARKS.md).
        # `spin: true` restores it (back-to-back calls of one model may gain a little).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_out is not None:
        # Extended, not ALL: "all" layout transforms are CPU-instruction specific and would tie the file to this CPU.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized_out)
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def io_spec(session) -> IOSpec:
    def spec(t) -> TensorSpec:
        return TensorSpec(t.name, numpy_dtype(t.type), dims(t.shape))

    return IOSpec(tuple(spec(t) for t in session.get_inputs()), tuple(spec(t) for t in session.get_outputs()))


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, session, options: BuildOptions):
        super().__init__(io_spec(session), options.shapes)
        self._session = session

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outs = self._session.run(self.output_names, feeds)
        self.last_timings["compute"] = (time.perf_counter() - start) * 1e3
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = frozenset({"fp32", "fp16", "int8"})
    int8_quantizer = "onnxruntime"
    triton_platform = "onnxruntime_onnx"
    providers = ["CPUExecutionProvider"]

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def version(self) -> str:
        return ort.__version__

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        target = out_dir / ARTIFACT
        try:
            ort.InferenceSession(str(model_path), session_options(options, target), providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; keep the message, add context
            raise BuildError(f"ONNX Runtime could not load {model_path}: {exc}") from exc
        if not target.exists():  # some ORT builds skip writing when nothing changed
            shutil.copyfile(model_path, target)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        so = session_options(options)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(artifact_dir / ARTIFACT), so, providers=self.providers)
        except Exception as exc:
            raise BuildError(f"ONNX Runtime could not load the cached model in {artifact_dir}: {exc}") from exc
        return OnnxRuntimeRunner(session, options)
