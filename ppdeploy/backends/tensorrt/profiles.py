"""Optimization profiles, pure (no TensorRT needed): one min/opt/max range per input and profile, their envelope,
which profile holds a request, and buffer sizes."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.tensorrt.settings import BuilderSettings
from ppdeploy.core.errors import BuildError, InputError
from ppdeploy.core.shapes import InputRange, ShapeProfile
from ppdeploy.core.tensors import TensorSpec


def plan_profiles(inputs: Sequence[TensorSpec], options: BuildOptions,
                  settings: BuilderSettings | None = None) -> list[dict[str, InputRange]]:
    """Resolve one min/opt/max range per network input for every optimization profile.

    Sources, in order: ``options.shapes`` (the model config's shapes, or ``ShapeProfile.from_samples`` over sample
    inputs), then ``settings.profiles``. Static inputs get their fixed shape. A dynamic input without a range is a
    BuildError naming it, because TensorRT cannot build it and its own message for this is cryptic.
    """
    settings = settings or BuilderSettings.from_options(options)
    sources = [options.shapes] if options.shapes or not settings.profiles else []
    sources += [ShapeProfile.from_dict(p) for p in settings.profiles]
    names = {t.name for t in inputs}
    plans: list[dict[str, InputRange]] = []
    for index, profile in enumerate(sources):
        unknown = sorted(set(profile.ranges) - names)
        if unknown:
            raise BuildError(f"shape profile {index} names unknown input(s) {unknown}; the model takes {sorted(names)}")
        plan: dict[str, InputRange] = {}
        for spec in inputs:
            rng = profile.ranges.get(spec.name)
            if rng is None:
                if spec.dynamic:
                    raise BuildError(
                        f"input {spec.describe()} has dynamic dims and profile {index} gives no min/opt/max for it",
                        hint="pass shapes={'%s': {'min': [...], 'opt': [...], 'max': [...]}} or collect them from "
                             "sample inputs with ShapeProfile.from_samples" % spec.name,
                    )
                fixed = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
                plan[spec.name] = InputRange(fixed, fixed, fixed)
                continue
            if len(rng.min) != len(spec.shape):
                raise BuildError(f"profile {index} gives input '{spec.name}' rank {len(rng.min)}, "
                                 f"the model has {spec.describe()}")
            for axis, want in enumerate(spec.shape):
                if want is not None and not (rng.min[axis] == rng.max[axis] == want):
                    raise BuildError(f"profile {index} varies dim {axis} of input '{spec.name}' "
                                     f"({rng.min[axis]}..{rng.max[axis]}) but the model fixes it to {want}")
            plan[spec.name] = rng
        plans.append(plan)
    return plans


def envelope(profiles: Sequence[Mapping[str, InputRange]]) -> ShapeProfile:
    """The smallest single range covering every profile, for the base Runner's early check."""
    out: dict[str, InputRange] = {}
    for name in profiles[0] if profiles else ():
        rngs = [p[name] for p in profiles]
        lo = tuple(min(r.min[i] for r in rngs) for i in range(len(rngs[0].min)))
        hi = tuple(max(r.max[i] for r in rngs) for i in range(len(rngs[0].max)))
        opt = tuple(min(max(o, l), h) for o, l, h in zip(rngs[0].opt, lo, hi))
        out[name] = InputRange(lo, opt, hi)
    return ShapeProfile(out)


def select_profile(profiles: Sequence[Mapping[str, InputRange]], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile holding every input shape; InputError listing the profiles when none does."""
    for index, profile in enumerate(profiles):
        if all(profile[n].contains(s) for n, s in shapes.items() if n in profile):
            return index
    described = "; ".join(
        f"#{i}: " + ", ".join(f"{n} {list(r.min)}..{list(r.max)}" for n, r in p.items()) for i, p in enumerate(profiles))
    got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    raise InputError(f"input shapes ({got}) fit none of the engine's optimization profiles ({described})",
                     hint="rebuild with a profile that covers these shapes (shapes=... / extra['profiles'])")


def nbytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize
