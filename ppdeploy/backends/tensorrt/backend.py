"""TensorRT engines from full TensorRT (10.x / 11.x, ``import tensorrt``) or TensorRT-RTX
(``import tensorrt_rtx_bindings``): one implementation for both, the differences in `LibraryTraits` (library.py).

Networks are always built strongly typed: precision comes from the ONNX graph (see ppdeploy.precision), which is the
only way TensorRT 11 and TensorRT-RTX accept it (they have no FP16/INT8 builder flags) and keeps TensorRT 10 on the
same path. What has run on which hardware: bench/gpu/README.md ("TensorRT backend: what has run").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.backends.tensorrt.artifact import ENGINE_FILE, aux_cache_path, read_meta
from ppdeploy.backends.tensorrt.build import build_engine
from ppdeploy.backends.tensorrt.cuda import CudaMemory, import_cudart
from ppdeploy.backends.tensorrt.library import (
    TENSORRT,
    TENSORRT_RTX,
    Flavour,
    import_library,
    make_logger,
    traits_of,
)
from ppdeploy.backends.tensorrt.runner import TensorRTRunner
from ppdeploy.backends.tensorrt.settings import BuilderSettings
from ppdeploy.core.device import gpu_info
from ppdeploy.core.errors import BuildError
from ppdeploy.core.lazy import install_hint

log = logging.getLogger("ppdeploy.backends.tensorrt.backend")


class TensorRTBackend(Backend):
    """Full TensorRT 10.x / 11.x."""

    name = "tensorrt"
    # Strongly typed networks: the precision is the ONNX graph's (FP16 graph, INT8 Q/DQ graph).
    precisions = frozenset({"fp32", "fp16", "int8"})
    int8_quantizer = "onnxruntime"
    triton_platform = "tensorrt_plan"
    device = "gpu"
    # TensorRT-RTX 1.7 parses ONNX NonMaxSuppression but has no implementation of it ("has no runners that
    # implement it") and registers no EfficientNMS_TRT plugin; full TensorRT is not measured here: NMS on the host
    nms_in_graph = False
    flavour: Flavour = TENSORRT

    def _library(self) -> tuple[Any | None, str | None]:
        return import_library(self.flavour)

    def unavailable_reason(self) -> str | None:
        trt, reason = self._library()
        if trt is None:
            return reason
        gpus = gpu_info()
        if not gpus:
            return f"no GPU: {self.flavour.label} {trt.__version__} is installed but no NVIDIA GPU is visible (nvidia-smi)"
        problem = traits_of(self.flavour, trt).cc_problem(str(gpus[0].get("compute_capability", "")))
        if problem:
            return f"unsupported GPU: {gpus[0].get('name')}: {problem}"
        if import_cudart() is None:
            return f"library missing: cuda-python is not installed ({install_hint('cuda')}); the runner needs it"
        return None

    def build_unavailable_reason(self, target: str | None = None) -> str | None:
        """None when an engine can be built here (for `target`, or for this machine's GPU), else why not.

        TensorRT-RTX's builder needs no GPU (it compiles kernels at run time): with a target, or portable across
        its architectures without one. Full TensorRT times tactics on the GPU, so it builds only on one; its
        'ampere+' target makes an engine that other Ampere-or-later GPUs run."""
        trt, reason = self._library()
        if trt is None:
            return reason
        traits = traits_of(self.flavour, trt)
        if target is not None and traits.target_problem(target):
            return traits.target_problem(target)
        if traits.runtime_cache:  # JIT at run time: the builder works without a GPU
            return None
        if not gpu_info():
            return f"no GPU: {self.flavour.label} {trt.__version__} times its kernels on a GPU while building"
        return None

    def targets(self) -> tuple[str, ...]:
        """What `build --target` accepts with the installed library (empty when it is not installed)."""
        trt, _ = self._library()
        return traits_of(self.flavour, trt).targets() if trt is not None else ()

    def version(self) -> str:
        trt, reason = self._library()
        if trt is None:
            raise BuildError(reason or "unavailable")
        return str(trt.__version__)

    def key_parts(self, options: BuildOptions | None = None) -> dict[str, Any]:
        """Library name + version and the builder settings that shape the engine (defaults resolved, so changing a
        default in a later ppdeploy also changes the key). The lead adds device.identity("gpu")."""
        parts = {"backend": self.name, "library": self.flavour.module, "version": self.version()}
        trt, _ = self._library()
        if trt is not None and hasattr(trt, "get_nv_onnx_parser_version"):
            parts["onnx_parser"] = int(trt.get_nv_onnx_parser_version())
        if options is not None:
            parts["builder"] = BuilderSettings.from_options(options).engine_key()
        return parts

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        build_engine(self.flavour, Path(model_path), Path(out_dir), options)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        trt, reason = self._library()
        if trt is None:
            raise BuildError(reason or "unavailable")
        traits = traits_of(self.flavour, trt)
        meta = read_meta(artifact_dir)
        _check_target(traits, meta)
        engine_bytes = (Path(artifact_dir) / ENGINE_FILE).read_bytes()
        cuda = CudaMemory()
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            cuda.close()
            detail = "; ".join(logger.errors[-3:]) or "no error was logged"
            # BuildError lets the caller drop the cache entry, rebuild once, then fall back along the chain.
            raise BuildError(f"{traits.flavour.label} {traits.version} could not deserialize {artifact_dir}: {detail}")
        settings = BuilderSettings.from_options(options)
        cache = cache_path = None
        if traits.runtime_cache and settings.runtime_cache:
            cache_path = aux_cache_path(Path(artifact_dir), "runtime", traits)
            cache = engine.create_runtime_config().create_runtime_cache()
            if cache_path.is_file() and not cache.deserialize(cache_path.read_bytes()):
                log.info("ignoring stale TensorRT-RTX runtime cache %s (other version or GPU)", cache_path)
        runner = TensorRTRunner(trt, traits, engine, meta, cuda, cache, cache_path)
        runner._runtime = runtime  # the engine must not outlive its runtime
        return runner


def _check_target(traits, meta: dict[str, Any]) -> None:
    """Refuse an engine built ahead of time for another GPU, before TensorRT fails on it less clearly."""
    target = meta.get("target")
    gpus = gpu_info()
    if target is None or not gpus:
        return
    cc = str(gpus[0].get("compute_capability", ""))
    if not traits.target_runs_on(str(target), cc):
        raise BuildError(f"this engine was built for target {target}; this GPU ({gpus[0].get('name')}) has compute "
                         f"capability {cc}", hint=f"rebuild for it: ppdeploy build MODEL --backend "
                                                  f"{traits.flavour.name} --target {cc}")


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT for RTX: strongly typed, JIT-compiles kernels at run time (runtime cache), no timing cache."""

    name = "tensorrt-rtx"
    flavour = TENSORRT_RTX
