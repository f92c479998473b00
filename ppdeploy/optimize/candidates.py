"""The candidates `ppdeploy optimize` tries: one backend x precision (plus FP32 regions or a rec guard), which of
them can run on this machine and why the others cannot, and how a winner is picked.

What a backend runs is asked of its class (`Backend.precisions`, `precision_unavailable`, `device`, `formats`),
so a newly registered backend is searched without an edit here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ppdeploy.backends.registry import BACKENDS, get_backend
from ppdeploy.core.errors import AccuracyError, InputError, PPDeployError
from ppdeploy.precision.registry import PRECISIONS

TARGETS = ("latency", "throughput")
# Precisions worth trying on GPU backends only: CPU kernels emulate FP16, so there is no speed to win there.
GPU_ONLY_PRECISIONS = frozenset({"fp16"})
# The model format whose own runtime is the numerical reference (Paddle Inference runs the original program).
REFERENCE_FORMAT = "paddle"


@dataclass
class Candidate:
    backend: str
    precision: str
    status: str = "pending"  # winner | passed | failed-accuracy | failed-build | skipped
    reason: str | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    throughput: float | None = None
    best_batch: int | None = None
    score: float | None = None  # what the target ranks by (ms: lower is better; items/s: higher is better)
    load_s: float | None = None
    cache_hit: bool | None = None
    peak_rss_mib: float | None = None
    guard: bool = False  # OCR rec only: an FP32 copy re-reads the lines this one is unsure of (tasks/ocr/guard.py)
    keep_fp32: tuple[str, ...] = ()  # regions kept in FP32 (ppdeploy.graph.regions), e.g. a BF16 det's encoder

    @property
    def label(self) -> str:
        return (f"{self.backend} {self.precision}" + "".join(f" + fp32 {r}" for r in self.keep_fp32)
                + (" + fp32 guard" if self.guard else ""))

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "winner")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise InputError(f"unknown target '{target}'", hint="latency or throughput")


def candidate_matrix(precisions: Sequence[str] | None, *, has_calib: bool,
                     backends: Sequence[str] | None = None) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates to try, candidates skipped with the reason) for the backends available on this machine."""
    known = PRECISIONS.names()
    precisions = list(precisions or known)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise InputError(f"unknown precision(s) {bad}", hint=f"choose from {', '.join(known)}")
    todo, skipped = [], []
    for name in backends or BACKENDS.names():
        try:
            be = get_backend(name)
            reason = be.unavailable_reason()
        except PPDeployError as exc:
            reason = str(exc).splitlines()[0]
            be = None
        for p in precisions:
            cand = Candidate(name, p)
            why = reason or skip_reason(be, p, has_calib)
            if why:
                cand.status, cand.reason = "skipped", why
                skipped.append(cand)
            else:
                todo.append(cand)
    return todo, skipped


def skip_reason(be, precision: str, has_calib: bool) -> str | None:
    """Why the available backend `be` is not tried at `precision` here, or None to try it."""
    if precision in GPU_ONLY_PRECISIONS and be.device != "gpu":
        return f"{precision.upper()} pays off on GPUs only; CPU kernels emulate it"
    if PRECISIONS.get(precision).needs_calibration and not has_calib:
        return f"{precision.upper()} needs calibration data (--calib DIR)"
    if precision not in be.precisions:
        others = [n for n in BACKENDS.where(lambda cls: precision in cls.precisions)]
        return (f"{be.name} does not run {precision.upper()}"
                + (f" ({', '.join(others)} do{'es' if len(others) == 1 else ''})" if others else ""))
    return be.precision_unavailable(precision)


def reference_backend(names: Sequence[str]) -> str | None:
    """Among `names`, the backend that runs the REFERENCE_FORMAT model itself (None when none of them does)."""
    return next((n for n in names if REFERENCE_FORMAT in BACKENDS.get(n).formats), None)


def failure(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for a candidate whose load failed; load_model wraps a failed precision gate in BuildError."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(x, AccuracyError) for x in chain) or "accuracy gate" in str(exc):
        return "failed-accuracy", error_text(exc)
    return "failed-build", error_text(exc)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def pick_winner(cands: Sequence[Candidate], target: str) -> Candidate | None:
    ok = [c for c in cands if c.passed and c.score is not None]
    if not ok:
        return None
    best = min(ok, key=lambda c: c.score) if target == "latency" else max(ok, key=lambda c: c.score)
    for c in cands:
        if c.status == "winner":
            c.status = "passed"
    best.status = "winner"
    return best


def rank_key(target: str):
    """Sort key for report tables: winner, passed, failed, skipped; then by score in the target's direction."""
    order = {"winner": 0, "passed": 1, "failed-accuracy": 2, "failed-build": 3, "skipped": 4, "pending": 5}

    def key(c: Candidate):
        s = c.score if c.score is not None else float("inf")
        return (order.get(c.status, 9), s if target == "latency" else -s if c.score is not None else float("inf"))

    return key
