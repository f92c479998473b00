"""Tensor specs and input validation: what a model takes and returns, checked before any engine sees it.

They live in core because every layer speaks them: backends describe their I/O with them, the server validates
requests against them, tasks build feeds for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import InputError
from ppdeploy.core.shapes import ShapeProfile


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int | None, ...]  # None marks a dynamic dimension

    @property
    def dynamic(self) -> bool:
        return any(d is None for d in self.shape)

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def validate_inputs(io: IOSpec, feeds: Mapping[str, np.ndarray], shapes: ShapeProfile | None = None) -> dict[str, np.ndarray]:
    """Check names, dtypes, ranks, fixed dims and profile ranges; return C-contiguous arrays.

    Errors name the input and say what was expected, because a backend's own message for the same
    mistake is often a crash or an unreadable shape-inference failure deep inside the graph.
    """
    expected = {t.name: t for t in io.inputs}
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    missing = sorted(set(expected) - set(feeds))
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {[t.describe() for t in io.inputs]}")
    out: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        arr = feeds[name]
        if not isinstance(arr, np.ndarray):
            raise InputError(f"input '{name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"input '{name}' has dtype {arr.dtype}, the model expects {spec.dtype}",
                hint=f"convert with array.astype(numpy.{spec.dtype})",
            )
        if arr.ndim != len(spec.shape):
            raise InputError(f"input '{name}' has rank {arr.ndim} (shape {arr.shape}), expected {spec.describe()}")
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if want is not None and got != want:
                raise InputError(f"input '{name}' dim {axis} is {got}, the model fixes it to {want} ({spec.describe()})")
            if got == 0:
                raise InputError(f"input '{name}' has an empty dim {axis} (shape {arr.shape})")
        if shapes and name in shapes.ranges and not shapes.ranges[name].contains(arr.shape):
            r = shapes.ranges[name]
            raise InputError(
                f"input '{name}' shape {tuple(arr.shape)} is outside the build profile min={r.min} max={r.max}",
                hint="rebuild with a wider shape profile (--shapes) or resize/split the input",
            )
        out[name] = np.ascontiguousarray(arr)
    return out


def numpy_dtype(name: str) -> str:
    """Normalise backend dtype spellings ('tensor(float)', 'FP32', 'f32', paddle's 'float32') to numpy names."""
    table = {
        "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
        "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
        "tensor(bool)": "bool", "f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64",
        "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool", "fp32": "float32", "fp16": "float16",
        "bf16": "bfloat16",
    }
    key = str(name).lower().replace("paddle.", "").replace("dtype.", "")
    return table.get(key, key)


def dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """Backend shape → tuple with None for every symbolic, negative or missing dim."""
    out: list[int | None] = []
    for d in shape:
        out.append(d if isinstance(d, int) and d > 0 else None)
    return tuple(out)
