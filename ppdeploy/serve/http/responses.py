"""Errors to HTTP answers: JSON bodies, with Retry-After where a retry can succeed (serve.errors decides the status)."""
from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

from ppdeploy.serve.batcher import QueueFull
from ppdeploy.serve.errors import message, status_of

log = logging.getLogger("ppdeploy.serve")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status, headers, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    status = status_of(exc)
    headers = None
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif status == 503:
        headers = {"Retry-After": "1"}
    text = message(exc)
    if status >= 500 and status != 503:
        log.error("request failed: %s", text)
    return json_response({"error": text}, status, headers)
