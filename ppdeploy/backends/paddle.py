"""Paddle Inference on the CPU: runs the original Paddle model (no ONNX), which makes it the numerical
reference for `verify`. The artifact is a copy of the model files, so a cached engine survives the source
folder moving or changing (a changed source has a new hash, hence a new entry)."""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.core.errors import BuildError
from ppdeploy.core.lazy import import_paddle, install_hint
from ppdeploy.core.tensors import IOSpec, TensorSpec, dims, numpy_dtype


def _model_files(artifact_dir: Path) -> tuple[Path, Path]:
    for suffix in (".pdmodel", ".json"):
        model = artifact_dir / f"inference{suffix}"
        if model.exists():
            return model, artifact_dir / "inference.pdiparams"
    raise BuildError(f"no Paddle model in {artifact_dir}")


class PaddleRunner(Runner):
    backend = "paddle"

    def __init__(self, predictor, io: IOSpec, options: BuildOptions, without_onednn=None):
        """without_onednn: makes the same predictor with oneDNN off, for a graph oneDNN cannot run (see _infer)."""
        super().__init__(io, options.shapes)
        self._without_onednn = without_onednn
        self._use(predictor)

    def _use(self, predictor) -> None:
        self._predictor = predictor
        self._inputs = {n: predictor.get_input_handle(n) for n in predictor.get_input_names()}
        self._outputs = {n: predictor.get_output_handle(n) for n in predictor.get_output_names()}

    def _feed_and_run(self, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
        """-> (time after copying the inputs, time after the run)."""
        for name, arr in feeds.items():
            self._inputs[name].reshape(list(arr.shape))
            self._inputs[name].copy_from_cpu(arr)
        copied = time.perf_counter()
        self._predictor.run()
        return copied, time.perf_counter()

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            t1, t2 = self._feed_and_run(feeds)
        except Exception as exc:
            # Some PIR graphs load with oneDNN but fail on the first run, e.g. nearest_interp's f64 `scale` array
            # ("ConvertPirAttribute2RuntimeAttribute not support pir::ArrayAttribute<pir::DoubleAttribute>" in
            # onednn_instruction.cc; PaddleDetection exports): run them with oneDNN off, once decided for good.
            if self._without_onednn is None or "onednn" not in str(exc).lower():
                raise
            self._use(self._without_onednn())
            self._without_onednn = None
            start = time.perf_counter()
            t1, t2 = self._feed_and_run(feeds)
        out = {name: handle.copy_to_cpu() for name, handle in self._outputs.items()}
        t3 = time.perf_counter()
        self.last_timings.update(h2d=(t1 - start) * 1e3, compute=(t2 - t1) * 1e3, d2h=(t3 - t2) * 1e3)
        return out

    def close(self) -> None:
        self._predictor = None


class PaddleBackend(Backend):
    name = "paddle"
    consumes = "paddle"
    formats = frozenset({"paddle"})
    precisions = frozenset({"fp32"})  # the original FP32 program; reduced precisions are applied to the ONNX graph
    triton_platform = "paddle"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("paddle") is None:
            return f"paddlepaddle is not installed ({install_hint('paddle')})"
        return None

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version("paddlepaddle")

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        # model_path is the Paddle model file (.pdmodel or .json); weights sit beside it.
        shutil.copyfile(model_path, out_dir / f"inference{model_path.suffix}")
        shutil.copyfile(model_path.with_suffix(".pdiparams"), out_dir / "inference.pdiparams")

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        import_paddle()
        import paddle.inference as pi

        model, params = _model_files(artifact_dir)
        config = pi.Config(str(model), str(params))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(options.resolved_threads())
        config.disable_glog_info()
        onednn = options.extra.get("mkldnn", True)
        if onednn:
            config.enable_mkldnn()
        else:
            config.disable_mkldnn()
        try:
            predictor = pi.create_predictor(config)
        except Exception as exc:
            raise BuildError(f"Paddle Inference could not load {model}: {str(exc).strip()[-800:]}") from exc

        def without_onednn():
            plain = pi.Config(str(model), str(params))
            plain.disable_gpu()
            plain.set_cpu_math_library_num_threads(options.resolved_threads())
            plain.disable_glog_info()
            plain.disable_mkldnn()
            return pi.create_predictor(plain)

        return PaddleRunner(predictor, _io_spec(predictor, model), options, without_onednn if onednn else None)


def _io_spec(predictor, model_file: Path) -> IOSpec:
    """Paddle's tensor handles report shapes only after a run, so names come from the predictor and dtypes and
    shapes from the program's own declarations (feed vars of a .pdmodel, data/fetch ops of a PIR .json)."""
    declared = _declared_pir(model_file) if model_file.suffix == ".json" else _declared_pdmodel(model_file)
    inputs = tuple(TensorSpec(n, *declared.get(n, ("float32", ()))) for n in predictor.get_input_names())
    outputs = tuple(TensorSpec(n, *declared.get(n, ("float32", ()))) for n in predictor.get_output_names())
    return IOSpec(inputs, outputs)


# framework.proto VarType.Type values for tensor element types
_PROTO_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64",
                 20: "uint8", 21: "int8", 22: "bfloat16"}


def _declared_pdmodel(model_file: Path) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    import_paddle()
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(model_file.read_bytes())
    out = {}
    # Paddle 3 renamed the proto field lod_tensor -> dense_tensor; accept whichever this paddle has.
    field = "dense_tensor" if "dense_tensor" in framework_pb2.VarType.DESCRIPTOR.fields_by_name else "lod_tensor"
    for var in desc.blocks[0].vars:
        if var.type.HasField(field):
            tensor = getattr(var.type, field).tensor
            out[var.name] = (_PROTO_DTYPES.get(tensor.data_type, "float32"), dims(list(tensor.dims)))
    return out


def _declared_pir(model_file: Path) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    import json

    program = json.loads(model_file.read_text())
    values: dict[int, tuple[str, tuple[int | None, ...]]] = {}
    out: dict[str, tuple[str, tuple[int | None, ...]]] = {}

    def tensor_type(tt) -> tuple[str, tuple[int | None, ...]] | None:
        try:
            dtype = tt["D"][0]["#"].split("t_")[-1]
            return numpy_dtype(dtype), dims(tt["D"][1])
        except (KeyError, IndexError, TypeError):
            return None

    for region in program["program"].get("regions", []):
        for block in region.get("blocks", []):
            for op in block.get("ops", []):
                outs = op.get("O", [])
                for o in outs if isinstance(outs, list) else [outs]:
                    if isinstance(o, dict) and "%" in o and "TT" in o and (t := tensor_type(o["TT"])):
                        values[o["%"]] = t
                kind = op.get("#", "")
                attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op.get("A", []) if isinstance(a, dict)}
                if kind.endswith(".data") and isinstance(attrs.get("name"), str):
                    o = outs[0] if isinstance(outs, list) and outs else {}
                    if o.get("%") in values:
                        out[attrs["name"]] = values[o["%"]]
                elif kind.endswith(".fetch") and isinstance(attrs.get("name"), str):
                    ins = op.get("I", [])
                    if ins and ins[0].get("%") in values:
                        out[attrs["name"]] = values[ins[0]["%"]]
    return out
