"""Shape profiles: the min/opt/max range each dynamic input may take.

TensorRT needs them to build; the other backends use them to reject out-of-range inputs early and to
generate verification inputs. Kept as plain tuples so they hash and serialize trivially.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputRange:
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError(f"min/opt/max ranks differ: {self.min} {self.opt} {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (1 <= lo <= mid <= hi):
                raise ValueError(f"need 1 <= min <= opt <= max per dim, got {self.min} {self.opt} {self.max}")

    def contains(self, shape: Iterable[int]) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


@dataclass(frozen=True)
class ShapeProfile:
    """Ranges per input name. An input absent from the profile is unconstrained."""

    ranges: Mapping[str, InputRange] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Iterable[int]]] | None) -> "ShapeProfile":
        if not data:
            return cls({})
        return cls({name: InputRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in data.items()})

    @classmethod
    def from_samples(cls, samples: Iterable[Mapping[str, Shape]]) -> "ShapeProfile":
        """Collect min/max per dim over observed shapes (Paddle-TRT's shape-range collection); opt = last max seen
        per dim is not meaningful, so opt is the most frequent shape."""
        seen: dict[str, list[Shape]] = {}
        for sample in samples:
            for name, shape in sample.items():
                seen.setdefault(name, []).append(tuple(int(d) for d in shape))
        ranges = {}
        for name, shapes in seen.items():
            lo = tuple(min(s[i] for s in shapes) for i in range(len(shapes[0])))
            hi = tuple(max(s[i] for s in shapes) for i in range(len(shapes[0])))
            opt = max(set(shapes), key=shapes.count)
            ranges[name] = InputRange(lo, opt, hi)
        return cls(ranges)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in sorted(self.ranges.items())}

    def __bool__(self) -> bool:
        return bool(self.ranges)
