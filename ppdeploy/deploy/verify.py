"""Does the optimized model still agree with Paddle? Same inputs through the reference (Paddle Inference) and
each backend; per output: max abs / max rel error, mean abs error and cosine similarity; pass/fail against
tolerances the user sets. Outputs are matched by name, or by position when a converter renamed them
(paddle2onnx 2.x names PIR outputs differently from Paddle's fetch names)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import InputError
from ppdeploy.core.tensors import IOSpec


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999


@dataclass
class OutputComparison:
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    passed: bool


@dataclass
class BackendComparison:
    backend: str
    outputs: list[OutputComparison] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)


@dataclass
class VerifyReport:
    model: str
    reference: str
    tolerance: Tolerance
    inputs: dict[str, list[int]]
    backends: list[BackendComparison]

    @property
    def passed(self) -> bool:
        return all(b.passed for b in self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference, "tolerance": asdict(self.tolerance),
                "inputs": self.inputs, "passed": self.passed,
                "backends": [{"backend": b.backend, "passed": b.passed, "error": b.error,
                              "outputs": [asdict(o) for o in b.outputs]} for b in self.backends]}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def table(self) -> str:
        rows = [f"verify {self.model} against {self.reference} "
                f"(atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}, cos>={self.tolerance.min_cosine:g})",
                f"{'backend':<18}{'output':<22}{'max_abs':>11}{'max_rel':>11}{'cosine':>12}  verdict"]
        for b in self.backends:
            if b.error:
                rows.append(f"{b.backend:<18}{'-':<22}{'':>11}{'':>11}{'':>12}  ERROR {b.error}")
            for o in b.outputs:
                rows.append(f"{b.backend:<18}{o.output[:21]:<22}{o.max_abs:>11.3g}{o.max_rel:>11.3g}{o.cosine:>12.8f}  "
                            f"{'PASS' if o.passed else 'FAIL'}")
        rows.append("PASS" if self.passed else "FAIL")
        return "\n".join(rows)


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputComparison:
    ref64 = np.asarray(ref, np.float64)
    got64 = np.asarray(got, np.float64)
    if ref64.shape != got64.shape:
        return OutputComparison(name, tuple(got64.shape), float("inf"), float("inf"), float("inf"), 0.0, False)
    diff = np.abs(ref64 - got64)
    max_abs = float(diff.max()) if diff.size else 0.0
    # relative error only where the reference is not ~0, else every near-zero output would dominate
    denom = np.abs(ref64)
    mask = denom > max(tol.atol, 1e-12)
    max_rel = float((diff[mask] / denom[mask]).max()) if mask.any() else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    a, b = ref64.ravel(), got64.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = 1.0 if na == 0 and nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0
    within = bool(np.all(diff <= tol.atol + tol.rtol * denom))
    return OutputComparison(name, tuple(ref64.shape), max_abs, max_rel, mean_abs, cosine,
                            within and cosine >= tol.min_cosine)


def align_rows(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """`got`'s rows reordered to match `ref`'s one to one (each reference row, in turn, takes the nearest unused row
    by max abs difference): for outputs whose rows form a set, such as NMS rows, whose order on equal scores is not
    defined and differs between engines. Arrays of other ranks or of different shapes are returned unchanged."""
    if ref.ndim != 2 or got.shape != ref.shape or len(ref) < 2:
        return got
    ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    free = np.ones(len(got64), bool)
    order = np.empty(len(ref64), np.int64)
    for i, row in enumerate(ref64):
        dist = np.where(free, np.abs(got64 - row).max(axis=1), np.inf)
        order[i] = int(np.argmin(dist))
        free[order[i]] = False
    return got[order]


def compare_outputs(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], tol: Tolerance,
                    backend: str, unordered: Collection[str] = ()) -> BackendComparison:
    """unordered: reference output names whose rows are compared as a set (align_rows)."""
    result = BackendComparison(backend)
    ref_items, out_items = list(reference.items()), list(outputs.items())
    if len(ref_items) != len(out_items):
        result.error = f"{len(out_items)} outputs vs {len(ref_items)} in the reference"
        return result
    for i, (name, ref) in enumerate(ref_items):
        got = outputs[name] if name in outputs else out_items[i][1]
        if name in unordered:
            got = align_rows(np.asarray(ref), np.asarray(got))
        result.outputs.append(compare_arrays(name, ref, got, tol))
    return result


def example_shape(spec_shape: Sequence[int | None], fallback: Sequence[int] | None = None) -> tuple[int, ...]:
    """A concrete shape for a possibly dynamic spec: batch 1, images 224 unless a better example is known."""
    if fallback is not None and len(fallback) == len(spec_shape):
        return tuple(int(s) if s is not None else int(f) for s, f in zip(spec_shape, fallback))
    out = []
    for axis, d in enumerate(spec_shape):
        out.append(d if d is not None else (1 if axis == 0 else 224 if len(spec_shape) == 4 else 16))
    return tuple(out)


def generate_inputs(io: IOSpec, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in io.inputs:
        shape = example_shape(spec.shape, (shapes or {}).get(spec.name))
        if np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.uniform(-1, 1, shape).astype(spec.dtype)
        elif np.dtype(spec.dtype).kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) > 0.5
        else:
            raise InputError(f"cannot generate inputs of dtype {spec.dtype} for '{spec.name}'; pass --input files")
    return feeds


def load_inputs(paths: Sequence[str | Path], io: IOSpec) -> dict[str, np.ndarray]:
    """`.npy` files in input order, `name=file.npy` pairs, or one `.npz` holding every input by name."""
    feeds: dict[str, np.ndarray] = {}
    names = [s.name for s in io.inputs]
    for i, item in enumerate(paths):
        item = str(item)
        name, _, file = item.partition("=") if "=" in item else (None, "", item)
        path = Path(file)
        if not path.is_file():
            raise InputError(f"input file not found: {path}")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as data:
                    feeds.update({k: data[k] for k in data.files})
            except Exception as exc:  # BadZipFile, a truncated member (EOFError, ValueError), an object array...
                raise InputError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})",
                                 hint="write it with numpy.savez(path, name=array, ...)") from None
            continue
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # not .npy at all, truncated, or an object array (never unpickled)
            raise InputError(f"{path} is not a readable .npy array ({type(exc).__name__}: {exc})",
                             hint="write it with numpy.save(path, array)") from None
        if name is None:
            if i >= len(names):
                raise InputError(f"more input files than model inputs ({names})")
            name = names[i]
        feeds[name] = arr
    return feeds


def verify(runners: Mapping[str, Runner], reference: Runner, feeds: Mapping[str, np.ndarray], *,
           tolerance: Tolerance = Tolerance(), model: str = "model", reference_name: str = "paddle",
           unordered: Collection[str] = ()) -> VerifyReport:
    """unordered: the reference's outputs whose rows form a set (a task says which: Task.unordered_outputs)."""
    ref_out = reference.infer(dict(feeds))
    results = []
    for name, runner in runners.items():
        try:
            out = runner.infer(dict(feeds))
        except Exception as exc:  # one backend failing must still leave a report for the others
            results.append(BackendComparison(name, error=str(exc).splitlines()[0][:300]))
            continue
        results.append(compare_outputs(ref_out, out, tolerance, name, unordered))
    return VerifyReport(model, reference_name, tolerance, {k: list(v.shape) for k, v in feeds.items()}, results)
