"""One trial inference on a freshly loaded runner: the proof that an engine runs, not only that it loaded.

Some backends create their execution contexts and buffers only at the first call (TensorRT), so a runner that
loaded may still fail at its first real input. `load_model` ends every backend attempt with `trial_inference`;
a failure there is a failed attempt like a build error, and the chain moves on. The served models use it again
(`ppdeploy.serve.models`) to tell an engine fault from a request the engine cannot take: a runner that fails on a
request and then on its own trial input is broken.

The input: per input, the profile's opt shape when there is one, else the zoo model's example shape, else the
model's fixed dims with batch 1 and 224 (images) / 16 for the dynamic ones. Cost: one call at that shape.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import BuildError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec
from ppdeploy.deploy.verify import generate_inputs


def trial_shapes(io: IOSpec, shapes: ShapeProfile | None = None,
                 example: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """The shape each input gets in the trial (see the module docstring for the order of preference)."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in io.inputs:
        if shapes and spec.name in shapes.ranges:
            out[spec.name] = tuple(shapes.ranges[spec.name].opt)
        elif example and spec.name in example and len(example[spec.name]) == len(spec.shape):
            out[spec.name] = tuple(int(s) if s is not None else int(e) for s, e in zip(spec.shape, example[spec.name]))
    return out


def trial_inference(runner: Runner, shapes: ShapeProfile | None = None,
                    example: Mapping[str, Sequence[int]] | None = None, *, seed: int = 0) -> dict[str, tuple]:
    """Run `runner` once on generated input; raise BuildError unless every output is finite and has its declared
    rank and fixed dims. Returns the input shapes used. Any exception of the backend is re-raised as BuildError
    with its type and message, so the caller's record says what the engine did."""
    feeds = generate_inputs(runner.io, seed=seed, shapes=trial_shapes(runner.io, shapes, example))
    used = {k: tuple(v.shape) for k, v in feeds.items()}
    try:
        outputs = runner.infer(feeds)
    except Exception as exc:
        raise BuildError(f"trial inference at {_shapes_text(used)} failed: {describe(exc)}") from exc
    for spec in runner.io.outputs:
        if spec.name not in outputs:
            raise BuildError(f"trial inference at {_shapes_text(used)}: output '{spec.name}' is missing")
        arr = np.asarray(outputs[spec.name])
        if arr.ndim != len(spec.shape) or any(d is not None and d != got for d, got in zip(spec.shape, arr.shape)):
            raise BuildError(f"trial inference at {_shapes_text(used)}: output '{spec.name}' has shape "
                             f"{tuple(arr.shape)}, declared {spec.describe()}")
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise BuildError(f"trial inference at {_shapes_text(used)}: output '{spec.name}' has {bad} non-finite "
                             f"value(s) of {arr.size}")
    return used


def describe(exc: BaseException) -> str:
    """`Type: first lines of the message` — what a log line, an attempt record or a metric label can hold."""
    text = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    message = " | ".join(text[:2])[:400]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _shapes_text(shapes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k}{list(v)}" for k, v in shapes.items())
