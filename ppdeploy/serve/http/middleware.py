"""`ServingMiddleware`: the one pure-ASGI middleware in front of every route (cheaper than Starlette's
BaseHTTPMiddleware): request id (`X-Request-ID`, taken from the client or generated, echoed back), API key
(`Authorization: Bearer KEY` or `X-API-Key: KEY`, every route but health), body size limit (Content-Length checked up
front, streamed bodies counted), a structured access log line (JSON, logger `ppdeploy.access`) per request, and the
direct dispatch of POST .../infer to its raw ASGI handler.
"""
from __future__ import annotations

import hmac
import itertools
import json
import logging
import re
import secrets
import time

from starlette.responses import Response

from ppdeploy.serve.batcher import (
    InferenceFailed,
)
from ppdeploy.serve.errors import BodyTooLarge
from ppdeploy.serve.http.responses import error_response, json_response
from ppdeploy.serve.http.settings import ServerSettings

access_log = logging.getLogger("ppdeploy.access")
log = logging.getLogger("ppdeploy.serve")


HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
# Generated request ids: a random per-process prefix and a counter (unique, and cheaper than 8 random bytes per
# request); 16 hex digits like before.
_RID_PREFIX = secrets.token_hex(4)
_rid_counter = itertools.count(1)


class ServingMiddleware:
    """`infer`: the raw ASGI handler of POST .../infer (Handlers.infer_asgi). The hottest route is dispatched here
    directly instead of through Starlette's exception middlewares, router and Request/Response objects, which
    cost about as much CPU per request as the handler itself (py-spy, tiny model at 2500 req/s)."""

    def __init__(self, app, settings: ServerSettings, infer=None):
        self.app = app
        self.settings = settings
        self._key = settings.api_key.encode() if settings.api_key else None
        self._infer = infer
        self._worker = settings.worker_id

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = scope["headers"]
        rid = content_length = auth = api_key = None
        for k, v in headers:
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:128]
            elif k == b"content-length":
                content_length = v
            elif k == b"authorization":
                auth = v
            elif k == b"x-api-key":
                api_key = v
        if not rid or not rid.isprintable():
            rid = f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFF:08x}"
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        status_box = [0, 0]  # status, bytes out
        rid_header = (b"x-request-id", rid.encode("latin-1", "replace"))

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            elif message["type"] == "http.response.body":
                status_box[1] += len(message.get("body", b""))
            await send(message)

        bytes_in = [0]
        limit = self.settings.max_body_bytes

        async def receive_limited():
            message = await receive()
            if message["type"] == "http.request":
                bytes_in[0] += len(message.get("body", b""))
                if bytes_in[0] > limit:
                    raise BodyTooLarge(f"request body exceeds the {limit}-byte limit of this server")
            return message

        error: Response | None = None
        if self._key is not None and path not in HEALTH_PATHS and not self._authorized(auth, api_key):
            error = json_response({"error": "missing or wrong API key (send 'Authorization: Bearer KEY' or "
                                            "'X-API-Key: KEY')"}, 401, {"WWW-Authenticate": "Bearer"})
        elif content_length is not None:
            try:
                if int(content_length) > limit:
                    error = error_response(BodyTooLarge(f"request body of {int(content_length)} bytes exceeds the "
                                                        f"{limit}-byte limit of this server"))
            except ValueError:
                error = json_response({"error": "invalid Content-Length header"}, 400)
        try:
            if error is not None:
                await error(scope, receive, send_wrapper)
            elif (self._infer is not None and scope["method"] == "POST" and path.endswith("/infer")
                  and (m := INFER_PATH.fullmatch(path))):
                await self._infer(scope, receive_limited, send_wrapper, m[1], m[2])
            else:
                await self.app(scope, receive_limited, send_wrapper)
        except Exception as exc:  # a bug, not a bad request; still answer (if we can) and log it
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), path, rid)
            if status_box[0] == 0:
                await error_response(InferenceFailed(f"internal error: {type(exc).__name__}: {exc}"))(
                    scope, receive, send_wrapper)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "request_id": rid, "method": scope.get("method"), "path": path,
                    "status": status_box[0], "ms": round((time.perf_counter() - start) * 1e3, 3),
                    "bytes_in": bytes_in[0], "bytes_out": status_box[1],
                    "client": scope["client"][0] if scope.get("client") else None,
                    **({} if self._worker is None else {"worker": self._worker}),
                }, separators=(",", ":")))

    def _authorized(self, auth: bytes | None, api_key: bytes | None) -> bool:
        given = None
        if auth is not None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        elif api_key is not None:
            given = api_key.strip()
        return given is not None and hmac.compare_digest(given, self._key)
