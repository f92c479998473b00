"""How a serving error is reported, whatever the protocol: its HTTP status, its one-line message, and Triton's
failure reason label. HTTP (serve.http) and gRPC (serve.grpc) both answer from these, so the same bad request gets
the same words and is counted the same way on either protocol."""
from __future__ import annotations

import asyncio

from ppdeploy.core.errors import InputError
from ppdeploy.serve.batcher import (
    ClientGone,
    InferenceFailed,
    QueueFull,
    RequestTimeout,
    ServingError,
)
from ppdeploy.serve.models import ModelNotFound, ModelNotReady


class BodyTooLarge(InputError):
    status = 413


def status_of(exc: BaseException) -> int:
    """The HTTP status: a serving error's own, 4xx for the client's mistakes (an InputError keeps a 4xx status it
    carries, e.g. 413), 500 for anything else (a bug or an engine fault)."""
    if isinstance(exc, (ServingError, ModelNotFound, ModelNotReady, BodyTooLarge)):
        return exc.status
    if isinstance(exc, InputError):
        status = getattr(exc, "status", 400)  # RequestTooLarge: 413
        return status if isinstance(status, int) and 400 <= status < 500 else 400
    return 500


def message(exc: BaseException) -> str:
    """One line: the error's text with its hint in parentheses."""
    return str(exc).replace("\n  hint: ", " (hint: ") + (")" if getattr(exc, "hint", None) else "")


def failure_reason(exc: BaseException) -> str:
    """Triton's failure reason label for the per-model failure counters."""
    if isinstance(exc, (QueueFull, RequestTimeout)):
        return "REJECTED"
    if isinstance(exc, (ClientGone, asyncio.CancelledError)):
        return "CANCELED"
    if isinstance(exc, InferenceFailed):
        return "BACKEND"
    return "OTHER"
