"""Backend choice and fallback: walk an ordered chain, record why each backend was skipped or failed.

The record is kept three ways on purpose: in the returned `attempts` (for reports and `/v2` metadata), in the
log (a WARNING per fallback, so it is seen), and in the process-wide FALLBACKS counter that the server exports
as a Prometheus metric.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import asdict, dataclass

from ppdeploy.backends.registry import BACKENDS, canonical, get_backend
from ppdeploy.core.errors import BackendUnavailable

log = logging.getLogger("ppdeploy.deploy.select")

USED, SKIPPED, FAILED = "used", "skipped", "failed"
# The default FP32 reference that calibration crops and task gates run on: always installed, CPU, deterministic.
REFERENCE_BACKEND = "onnxruntime"

_lock = threading.Lock()
# (backend, outcome) -> count, where outcome is "skipped" or "failed". Read by ppdeploy.serve.metrics.
FALLBACKS: collections.Counter = collections.Counter()


@dataclass
class Attempt:
    backend: str
    status: str  # used | skipped | failed
    reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def default_chain() -> tuple[str, ...]:
    """The order --backend auto tries: the registration order of BACKENDS (GPU first, then the CPU backends that
    were fastest on the bundled models, then Paddle Inference, which needs no conversion at all)."""
    return tuple(BACKENDS.names())


def chain_for(backend: str | list[str] | tuple[str, ...]) -> tuple[list[str], bool]:
    """Return (ordered backends, explicit). explicit=True means a single forced backend: no silent fallback."""
    if isinstance(backend, (list, tuple)):
        return [canonical(b) for b in backend], len(backend) == 1
    if backend in ("auto", "", None):
        return list(default_chain()), False
    if "," in backend:
        return [canonical(b) for b in backend.split(",") if b.strip()], False
    return [canonical(backend)], True


def first_runnable(backend: str | list[str] | tuple[str, ...]) -> str | None:
    """The backend `load_model` will try first with a chance of running (importable, reason-free), or None. A build
    may still fail and fall back; this is for choices that depend on the likely device, not a guarantee."""
    for name in chain_for(backend)[0]:
        try:
            if get_backend(name).unavailable_reason() is None:
                return name
        except BackendUnavailable:
            continue
    return None


def record(attempt: Attempt) -> Attempt:
    if attempt.status in (SKIPPED, FAILED):
        with _lock:
            FALLBACKS[(attempt.backend, attempt.status)] += 1
        level = logging.INFO if attempt.status == SKIPPED else logging.WARNING
        log.log(level, "backend %s %s: %s", attempt.backend, attempt.status, attempt.reason)
    else:
        log.info("backend %s used", attempt.backend)
    return attempt


def format_attempts(attempts: list[Attempt]) -> str:
    return "; ".join(f"{a.backend}: {a.status}" + (f" ({a.reason})" if a.reason else "") for a in attempts)
