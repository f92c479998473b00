"""The one interface every backend sits behind (Polygraphy-style: a builder and a runner per backend).

A backend turns a model (ONNX file, or a Paddle model directory for Paddle Inference) into an *artifact*
directory — the thing the engine cache stores — and loads that artifact into a `Runner`. Everything
above this layer (tasks, serving, benchmarks) sees only `Runner`.
"""
from __future__ import annotations

import abc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ppdeploy.core.errors import InputError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec, validate_inputs


def default_threads() -> int:
    """Threads a CPU backend should use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BuildOptions:
    """Everything that changes what a backend builds. All of it goes into the engine cache key."""

    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8 — fp16/int8 arrive already in the ONNX graph
    threads: int | None = None  # None: default_threads()
    shapes: ShapeProfile = field(default_factory=ShapeProfile)
    extra: Mapping[str, Any] = field(default_factory=dict)  # backend-specific (workspace, tf32, cuda graphs...)

    def resolved_threads(self) -> int:
        return self.threads or default_threads()

    def key_parts(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "threads": self.resolved_threads(),
            "shapes": self.shapes.to_dict(),
            "extra": {k: self.extra[k] for k in sorted(self.extra)},
        }


class Runner(abc.ABC):
    """Loaded model that runs inference. `infer` validates, then calls the backend's `_infer`."""

    backend: ClassVar[str] = "?"

    def __init__(self, io: IOSpec, shapes: ShapeProfile | None = None):
        self._io = io
        self._shapes = shapes or ShapeProfile()
        # Milliseconds per stage of the last call; backends add their own stages (h2d, compute, d2h, ...).
        self.last_timings: dict[str, float] = {}

    @property
    def io(self) -> IOSpec:
        return self._io

    @property
    def shapes(self) -> ShapeProfile:
        """The profile inputs are checked against (empty: unconstrained): a caller sizes its inputs to it (the
        trial inference of ppdeploy.deploy.trial, OCR rec's widest batch)."""
        return self._shapes

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self._io.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self._io.outputs]

    def infer(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        return self._run(feeds, self._infer)

    def infer_borrowed(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """`infer`, but the arrays may be the backend's own output buffers, valid only until this runner's next call:
        no copy, for a caller that reduces them at once (the OCR rec guard reads tens of MB of softmax per batch of
        long lines, and copying them cost ~3 ms of a 140 ms page). Backends without such buffers copy as `infer`."""
        return self._run(feeds, self._infer_borrowed)

    def _infer_borrowed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, infer) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            if len(self._io.inputs) != 1:
                raise InputError(f"model has {len(self._io.inputs)} inputs; pass a dict keyed by {self.input_names}")
            feeds = {self._io.inputs[0].name: feeds}
        feeds = validate_inputs(self._io, feeds, self._shapes)
        start = time.perf_counter()
        self.last_timings = {}
        out = infer(feeds)
        self.last_timings.setdefault("infer", (time.perf_counter() - start) * 1e3)
        return out

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        """Release backend resources. Safe to call twice."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(abc.ABC):
    """Builds artifacts and loads runners for one backend. Subclasses import their library lazily."""

    name: ClassVar[str]
    # The model it is fed: "onnx" (converted and precision-adjusted by ppdeploy) or "paddle" (the original Paddle
    # program, run as it is: no conversion, no output head, no reduced precision).
    consumes: ClassVar[str] = "onnx"
    # Every artifact format it builds from: "onnx", "paddle", "openvino-ir" (an OpenVINO IR, as NNCF's INT8 writes it).
    formats: ClassVar[frozenset[str]] = frozenset({"onnx"})
    # Precisions it runs (names in ppdeploy.precision.registry.PRECISIONS).
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})
    # The INT8 quantizer native to it (a name in ppdeploy.precision.quantizers.QUANTIZERS), None when it runs no INT8.
    int8_quantizer: ClassVar[str | None] = None
    device: ClassVar[str] = "cpu"  # "cpu" or "gpu": decides which device identity enters the cache key
    # The platform string Triton's model metadata uses for this kind of engine (KServe v2 "platform").
    triton_platform: ClassVar[str] = "ensemble"
    # True when its engine re-plans (and allocates) on every new input shape, so callers should bucket shapes
    # (pad to multiples) to keep the number of plans small; see tasks/ocr/builder.py GPU_SHAPE_BUCKETS.
    replans_per_shape: ClassVar[bool] = False
    # Where a detector's NMS runs by default when its graph has ONNX NonMaxSuppression: True, in the engine; False,
    # on the host (the detection task cuts the graph before NMS: graph.heads `nms_host`, an output head, so the
    # choice is in the cache key). Host unless measured faster in the engine: on CPU host NMS (OpenCV) was faster
    # with ONNX Runtime and OpenVINO (scripts/detection/nms_placement.py, BENCHMARKS.md), and TensorRT-RTX cannot
    # run NonMaxSuppression at all.
    nms_in_graph: ClassVar[bool] = False

    def precision_unavailable(self, precision: str) -> str | None:
        """None when it can run `precision` here; otherwise why not. The class-level `precisions` says what it runs
        at all; this adds run-time conditions (e.g. an instruction set of this CPU)."""
        if precision not in self.precisions:
            return f"{self.name} does not run {precision} (it runs {', '.join(sorted(self.precisions))})"
        return None

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when this backend can run here; otherwise why not and how to fix it."""

    def build_unavailable_reason(self, target: str | None = None) -> str | None:
        """None when this backend can build here — for `target` (one of `targets()`), ahead of time for another
        machine's GPU; otherwise why not. Most backends build where they run."""
        return self.unavailable_reason() if target is None else f"{self.name} does not build for other targets"

    def targets(self) -> tuple[str, ...]:
        """The GPU targets it can build for ahead of time (e.g. compute capabilities); empty: none."""
        return ()

    @abc.abstractmethod
    def version(self) -> str:
        ...

    @abc.abstractmethod
    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        """Write the artifact for `model_path` into the empty directory `out_dir`."""

    @abc.abstractmethod
    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        ...

    def key_parts(self, options: BuildOptions | None = None) -> dict[str, Any]:
        """Library identity for the cache key. Backends with build-time switches add them here with their defaults
        resolved from `options`, so a default that changes in a later ppdeploy changes the key too."""
        return {"backend": self.name, "version": self.version()}
