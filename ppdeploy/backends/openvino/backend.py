"""OpenVINO on the CPU. The artifact is OpenVINO's exported compiled model (a blob tied to this CPU and
OpenVINO version, hence the device identity in its cache key), so a cached start skips reading, transforming
and compiling the network.

Precision is pinned explicitly: OpenVINO's CPU plugin otherwise lowers to bf16 on CPUs that have it, which moves
outputs visibly (BENCHMARKS.md). BF16 is used only when asked for (precision="bf16").
"""
from __future__ import annotations

import importlib.util
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.backends.openvino import mixed as openvino_mixed
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.core.errors import BuildError, ConfigError, PPDeployError
from ppdeploy.core.lazy import install_hint, lazy_import
from ppdeploy.core.tensors import IOSpec, TensorSpec, dims, numpy_dtype
from ppdeploy.graph import deconv

ov = lazy_import("openvino", install="openvino")
onnx = lazy_import("onnx", install="onnx")

BLOB = "model.ovblob"


def compile_config(options: BuildOptions) -> dict:
    # inference_precision: set by ppdeploy for NNCF INT8 models quantized with quantizer="openvino-bf16"
    hint = "bf16" if options.precision == "bf16" or options.extra.get("inference_precision") == "bf16" else "f32"
    return {
        "INFERENCE_PRECISION_HINT": hint,
        "INFERENCE_NUM_THREADS": options.resolved_threads(),
        "PERFORMANCE_HINT": options.extra.get("performance_hint", "LATENCY"),
        "NUM_STREAMS": int(options.extra.get("num_streams", 1)),
    }


def _keep_fp32(options: BuildOptions) -> list[str]:
    """Regions kept in FP32 under BF16 (ppdeploy.graph.regions), set by deploy from the precision step."""
    keep = list(options.extra.get("keep_fp32") or ())
    if keep and compile_config(options)["INFERENCE_PRECISION_HINT"] != "bf16":
        raise ConfigError(f"keep_fp32={keep} applies to precision bf16, not {options.precision}")
    return keep


def _rewrite_for_cpu(model_path: Path, out_dir: Path) -> Path | None:
    """The graph with the rewrites that make it faster on OpenVINO's CPU plugin (ppdeploy.graph.deconv), written
    next to the artifact; None when none applies, or the graph cannot be rewritten (it is then compiled as it is)."""
    if model_path.suffix != ".onnx":
        return None
    try:
        model = onnx.load(str(model_path))
        if not deconv.deconv_as_depth_to_space(model):
            return None
        out = out_dir / f"rewritten-{model_path.name}"
        onnx.save(model, str(out))
        return out
    except Exception as exc:  # an optimisation, never a reason to fail the build
        logging.getLogger("ppdeploy.backends").warning("OpenVINO graph rewrite skipped for %s: %s", model_path, exc)
        return None


def _spec(port) -> TensorSpec:
    shape = []
    for d in port.get_partial_shape():
        shape.append(d.get_length() if d.is_static else None)
    return TensorSpec(port.get_any_name(), numpy_dtype(port.get_element_type().get_type_name()), dims(shape))


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, compiled, options: BuildOptions):
        io = IOSpec(tuple(_spec(p) for p in compiled.inputs), tuple(_spec(p) for p in compiled.outputs))
        super().__init__(io, options.shapes)
        self._compiled = compiled
        self._request = compiled.create_infer_request()  # one per runner: callers serialise per runner

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Outputs are copied: the request reuses its buffers next call.
        return self._call(feeds, share_outputs=False)

    def _infer_borrowed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._call(feeds, share_outputs=True)

    def _call(self, feeds: dict[str, np.ndarray], share_outputs: bool) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        results = self._request.infer(feeds, share_inputs=True, share_outputs=share_outputs)  # inputs: no copy
        self.last_timings["compute"] = (time.perf_counter() - start) * 1e3
        return {spec.name: np.asarray(results[i]) for i, spec in enumerate(self.io.outputs)}

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVINOBackend(Backend):
    name = "openvino"
    formats = frozenset({"onnx", "openvino-ir"})
    precisions = frozenset({"fp32", "fp16", "bf16", "int8"})  # bf16: the CPU plugin's inference precision
    int8_quantizer = "openvino"  # NNCF on the OpenVINO model: a QDQ graph runs slower than FP32 here
    triton_platform = "openvino"

    def precision_unavailable(self, precision: str) -> str | None:
        if precision == "bf16" and not cpu_supports_bf16():
            # OpenVINO would quietly run f32 instead: say so rather than report a bf16 engine that is not one
            return "bf16 requested but this CPU has no avx512_bf16/AMX"
        return super().precision_unavailable(precision)

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return f"openvino is not installed ({install_hint('openvino')})"
        return None

    def version(self) -> str:
        return ov.__version__ if hasattr(ov, "__version__") else ov.get_version()

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        core = ov.Core()
        keep = _keep_fp32(options)
        rewritten = _rewrite_for_cpu(model_path, out_dir)
        try:
            with tempfile.TemporaryDirectory(prefix="ppdeploy-ov-") as work:
                if keep:
                    model, marks = openvino_mixed.marked_model(core, rewritten or model_path, keep, Path(work))
                else:
                    model = core.read_model(str(rewritten or model_path))
                compiled = core.compile_model(model, "CPU", compile_config(options))
                if keep:
                    openvino_mixed.check_marks(compiled, model_path, marks)
                blob = compiled.export_model()
        except PPDeployError:
            raise
        except Exception as exc:
            raise BuildError(f"OpenVINO could not compile {model_path}: {str(exc).strip()[:800]}") from exc
        finally:
            if rewritten is not None:
                rewritten.unlink(missing_ok=True)
        data = blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)
        (out_dir / BLOB).write_bytes(data)

    def key_parts(self, options: BuildOptions | None = None) -> dict:
        parts = {**super().key_parts(options), "rewrites": {"deconv_as_depth_to_space": deconv.VERSION}}
        if options is not None and _keep_fp32(options):
            parts["keep_fp32_marks"] = openvino_mixed.VERSION
        return parts

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        core = ov.Core()
        try:
            compiled = core.import_model(io.BytesIO((artifact_dir / BLOB).read_bytes()), "CPU", compile_config(options))
        except Exception as exc:
            raise BuildError(f"OpenVINO could not import the cached blob in {artifact_dir}: {str(exc)[:500]}") from exc
        return OpenVINORunner(compiled, options)
