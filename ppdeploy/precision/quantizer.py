"""`Quantizer`: the contract of one INT8 quantizer (implementations: precision/quantizers/), as `apply` drives it.

A quantizer turns an FP32 ONNX graph and calibration samples into INT8 candidates; `apply` runs the shared gate and
exclusion search (precision/int8.py `search`) over them and keeps the accepted one. What it writes (`format`) decides
which backends build from it (`Backend.formats`); `run_precision` is the precision its ops left in float run at.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# (excluded node names, only these nodes or None) -> path of the candidate graph
Candidate = Callable[[Sequence[str], Sequence[str] | None], Path]


@dataclass(frozen=True)
class Quantizer:
    name: str
    # Artifact format of its graphs, as backends list them in `Backend.formats` ("onnx", "openvino-ir").
    format: str
    # (onnx_path, calibration part, method, cache, work dir) -> (candidate writer, quantizable node names,
    # calibration cache hit or None)
    candidates: Callable[..., tuple[Candidate, list[str], bool | None]]
    # (accepted candidate, output dir) -> (graph written into the output dir, INT8 coverage facts)
    save: Callable[[Path, Path], tuple[Path, dict[str, Any]]]
    # None when its libraries are importable, else why not (an "auto" choice is refused when it is not None).
    unavailable_reason: Callable[[], str | None]
    # (onnx_path, work dir after `candidates`, region names) -> names of the nodes of those regions (graph/regions.py)
    # in its candidates' own naming: what keep_fp32=["encoder"] leaves unquantized.
    region_nodes: Callable[[Path, Path, Sequence[str]], list[str]] | None = None
    # Calibration methods it offers, its default first.
    methods: tuple[str, ...] = ("minmax",)
    # The precision the ops it leaves unquantized run at ("bf16" needs a CPU with avx512_bf16/AMX).
    run_precision: str = "fp32"
    # Of what it does to a graph beyond its libraries' versions (part of the INT8 cache key): bump when it changes.
    version: int = 1
    # Distributions whose version enters the INT8 cache key.
    libraries: tuple[str, ...] = ()

    def method(self, wanted: str | Sequence[str] | None) -> str | None:
        """The calibration method to use: `wanted` if it offers it, or the first of a preference list it offers
        (a task asks for ("entropy", "minmax") without knowing which quantizer a backend will pick); None: default."""
        if wanted is None:
            return self.methods[0]
        if isinstance(wanted, str):
            return wanted if wanted in self.methods else None
        return next((m for m in wanted if m in self.methods), None)

    @property
    def gate_hint(self) -> str | None:
        """What runs its candidates in the gates (precision.runners): None is ONNX Runtime on the CPU, the plain
        reference runner; any other graph is run by the backend that builds its format, at its run precision."""
        return None if self.format == "onnx" and self.run_precision == "fp32" else self.name
