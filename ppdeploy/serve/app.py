"""The HTTP application: KServe v2 / Triton routes, task routes, metrics (Starlette; no FastAPI layer, because
request validation here is the protocol codec's job and every microsecond counts on the infer path).

Routes
  GET  /v2                                   server metadata
  GET  /v2/health/live, /v2/health/ready     (no API key needed)
  GET  /v2/models/{m}[/versions/{v}]         model metadata
  GET  /v2/models/{m}[/versions/{v}]/ready
  GET  /v2/models/{m}[/versions/{v}]/config  Triton model configuration (JSON)
  GET  /v2/models[/{m}[/versions/{v}]]/stats Triton statistics extension
  POST /v2/models/{m}[/versions/{v}]/infer   JSON and binary tensors
  POST /v2/repository/index                  model repository extension (index only)
  GET  /v2/systemsharedmemory[/region/{r}]/status, POST .../region/{r}/register, POST [.../region/{r}]/unregister
                                             system shared-memory extension (ppdeploy.serve.shm)
  POST /v1/<route>[/{m}]                     one per registered task (ppdeploy.tasks.registry.TASKS; /v1/ocr,
                                             /v1/classify): request body (raw or multipart) -> JSON
  GET  /metrics                              Prometheus

Cross-cutting (one pure-ASGI middleware, cheaper than Starlette's BaseHTTPMiddleware): request id
(`X-Request-ID`, taken from the client or generated, echoed back), API key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`, every route but health), body size limit (Content-Length checked up front, streamed bodies
counted), and a structured access log line (JSON, logger `ppdeploy.access`) per request.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ppdeploy import __version__
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve import kserve, shm
from ppdeploy.serve.batcher import (
    ClientGone,
    InferenceFailed,
    QueueFull,
    RequestTimeout,
    ServingError,
)
from ppdeploy.serve.grpc import start_grpc_server
from ppdeploy.serve.grpc import stop as stop_grpc_server
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import (
    READY,
    HostOptions,
    ModelHost,
    ModelNotFound,
    ModelNotReady,
    ServedModel,
)
from ppdeploy.tasks.base import Task
from ppdeploy.tasks.registry import TASKS

access_log = logging.getLogger("ppdeploy.access")
log = logging.getLogger("ppdeploy.serve")

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
SMALL_RESPONSE_BYTES = 65536  # below this, joining the response's parts is cheaper than a write per part
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
# Generated request ids: a random per-process prefix and a counter (unique, and cheaper than 8 random bytes per
# request); 16 hex digits like before.
_RID_PREFIX = secrets.token_hex(4)
_rid_counter = itertools.count(1)
EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_repository", "system_shared_memory"]


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 64 << 20
    max_image_pixels: int = 50_000_000
    task_threads: int = 4
    max_task_queue: int = 64  # image requests waiting for a pipeline thread before 429
    strict_readiness: bool = True
    drain_timeout_s: float = 30.0
    cache_dir: str | None = None
    workers: int = 1  # HTTP worker processes (ppdeploy.serve.workers); 1: this process serves
    worker_id: int | None = None  # set in each worker of --workers N: its index, written to the access log
    grpc_port: int | None = None  # Triton's gRPC protocol on this port too (0: a free one); None: HTTP only


class BodyTooLarge(InputError):
    status = 413


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, (ServingError, ModelNotFound, ModelNotReady, BodyTooLarge)):
        return exc.status
    if isinstance(exc, InputError):
        status = getattr(exc, "status", 400)  # RequestTooLarge: 413
        return status if isinstance(status, int) and 400 <= status < 500 else 400
    return 500


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, (QueueFull, RequestTimeout)):
        return "REJECTED"
    if isinstance(exc, ClientGone):
        return "CANCELED"
    if isinstance(exc, InferenceFailed):
        return "BACKEND"
    return "OTHER"


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status, headers, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    status = _status_of(exc)
    headers = None
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif status == 503:
        headers = {"Retry-After": "1"}
    message = str(exc).replace("\n  hint: ", " (hint: ") + (")" if getattr(exc, "hint", None) else "")
    if status >= 500 and status != 503:
        log.error("request failed: %s", message)
    return json_response({"error": message}, status, headers)


# ---------------------------------------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    return decode_body(await request.body(), request.headers.get("content-encoding", ""), limit)


async def receive_body(receive) -> bytes:
    """The whole request body from ASGI `receive` (one message is the common case: no join, no copy)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending the request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate or none)")
    # Decompress with a ceiling: a few KB of gzip can expand to gigabytes.
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge(f"decompressed request body exceeds the {limit}-byte limit of this server")
    return out


async def _until_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _accepted_encoding(accept: str | None) -> str | None:
    """gzip or deflate when the client's Accept-Encoding offers it (not with q=0), else None."""
    if not accept:
        return None
    offered = [p.split(";")[0].strip().lower() for p in accept.split(",") if "q=0" not in p.replace(" ", "")]
    return "gzip" if "gzip" in offered else "deflate" if "deflate" in offered else None


def _compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, 1)
    return zlib.compress(body, 1)


class Handlers:
    """Route handlers bound to one server's state."""

    def __init__(self, host: ModelHost, metrics: ServerMetrics, settings: ServerSettings):
        self.host = host
        self.metrics = metrics
        self.settings = settings
        self.draining = False
        self.task_in_flight = 0
        # --workers N: the sibling workers (ppdeploy.serve.workers.Peers). Readiness, /metrics and /stats answer
        # for the whole server, whichever worker the client reached.
        self.peers = None
        self.shm = shm.SharedMemoryRegistry()  # one namespace of regions per server, for HTTP and gRPC alike

    # -- lookup ---------------------------------------------------------------------------------------------
    def _model(self, request: Request, need_ready: bool = True) -> ServedModel:
        return self._model_named(request.path_params["model"], request.path_params.get("version"), need_ready)

    def _model_named(self, name: str, version: str | None, need_ready: bool = True) -> ServedModel:
        model = self.host.models.get(name)
        if model is None:
            if name in self.host.tasks:
                raise ModelNotFound(f"'{name}' is a task pipeline, not a tensor model; POST to "
                                    f"/v1/{self.host.tasks[name].task.route}/{name}")
            raise ModelNotFound(f"unknown model '{name}'" + (f"; this server has {', '.join(sorted(self.host.models))}"
                                                          if self.host.models else ""))
        if version is not None and version != model.cfg.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (available: {model.cfg.version})")
        if need_ready and model.state != READY:
            why = "is still loading" if model.state == "LOADING" else f"is unavailable: {model.reason}"
            raise ModelNotReady(f"model '{name}' {why}")
        return model

    def _shm_owner(self, auth: bytes | str | None, api_key: bytes | str | None, tag: bytes | str | None) -> str:
        """The client's shared-memory namespace: the API key it presented (when the server has one) and its tag."""
        if self.settings.api_key is None:
            return shm.owner_of(None, tag)
        if isinstance(auth, str):
            auth = auth.encode("latin-1")
        given = auth[7:].strip() if auth is not None and auth[:7].lower() == b"bearer " else api_key
        return shm.owner_of(given.strip() if isinstance(given, (bytes, str)) else None, tag)

    def _request_owner(self, request: Request) -> str:
        h = request.headers
        return self._shm_owner(h.get("authorization"), h.get("x-api-key"), h.get("x-ppdeploy-client"))

    # -- system shared memory -------------------------------------------------------------------------------
    async def shm_status(self, request: Request) -> Response:
        try:
            return json_response(self.shm.status(self._request_owner(request), request.path_params.get("region")))
        except PPDeployError as exc:
            return error_response(exc)

    async def shm_register(self, request: Request) -> Response:
        try:
            try:
                body = json.loads(await read_body(request, self.settings.max_body_bytes))
            except ValueError:
                raise kserve.ProtocolError("the register request body is not JSON") from None
            if not isinstance(body, dict):
                raise kserve.ProtocolError("the register request body must be a JSON object")
            self.shm.register(self._request_owner(request), request.path_params["region"], body.get("key"),
                              body.get("offset", 0), body.get("byte_size"))
            return Response(b"", 200)
        except PPDeployError as exc:
            return error_response(exc)

    async def shm_unregister(self, request: Request) -> Response:
        self.shm.unregister(self._request_owner(request), request.path_params.get("region"))
        return Response(b"", 200)

    # -- health / metadata ----------------------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return Response(b"", 200)

    async def ready(self, request: Request) -> Response:
        ok = self.host.ready() and not self.draining
        if ok and self.peers is not None:
            ok = await self.peers.all_ready()
        return Response(b"", 200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "ppdeploy", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        try:
            m = self._model(request)
            return json_response(kserve.model_metadata(m.name, m.cfg.version, m.io, m.engine.backend))
        except PPDeployError as exc:
            return error_response(exc)

    async def model_ready(self, request: Request) -> Response:
        try:
            self._model(request)
            return Response(b"", 200)
        except ModelNotReady:
            return Response(b"", 503)
        except PPDeployError as exc:
            return error_response(exc)

    async def model_config(self, request: Request) -> Response:
        try:
            m = self._model(request)
            return json_response(kserve.model_config_json(m.cfg, m.io, m.engine.backend, m.batcher.batch_axis))
        except PPDeployError as exc:
            return error_response(exc)

    async def model_stats(self, request: Request) -> Response:
        try:
            if "model" in request.path_params:
                names = [self._model(request, need_ready=False).name]
            else:
                names = list(self.host.models)
            metrics = await self.peers.merged_metrics() if self.peers is not None else self.metrics
            return json_response({"model_stats": [metrics.model(n).statistics() for n in names]})
        except PPDeployError as exc:
            return error_response(exc)

    async def repository_index(self, request: Request) -> Response:
        items = []
        for m in [*self.host.models.values(), *[t for n, t in self.host.tasks.items() if n not in self.host.models]]:
            item = {"name": m.name, "version": m.cfg.version, "state": m.state}
            if m.reason:
                item["reason"] = m.reason
            items.append(item)
        return json_response(items)

    async def prometheus(self, request: Request) -> Response:
        metrics = await self.peers.merged_metrics() if self.peers is not None else self.metrics
        return Response(metrics.render(), 200, media_type=ServerMetrics.CONTENT_TYPE)

    # -- inference ------------------------------------------------------------------------------------------
    async def infer_asgi(self, scope, receive, send, name: str, version: str | None) -> None:
        """POST /v2/models/{name}[/versions/{version}]/infer as a raw ASGI handler (see ServingMiddleware)."""
        start = time.perf_counter_ns()
        model = None
        header_length = content_encoding = accept_encoding = auth = api_key = client_tag = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"x-api-key":
                api_key = v
            elif k == b"x-ppdeploy-client":
                client_tag = v
            elif k == b"inference-header-content-length":
                header_length = v.decode("latin-1")
            elif k == b"content-encoding":
                content_encoding = v.decode("latin-1")
            elif k == b"accept-encoding":
                accept_encoding = v.decode("latin-1")
        try:
            model = self._model_named(name, version)
            body = await receive_body(receive)
            if content_encoding:
                body = decode_body(body, content_encoding, self.settings.max_body_bytes)
            owner = self._shm_owner(auth, api_key, client_tag)
            req = kserve.parse_infer_request(body, header_length, model.io,
                                             region_input=functools.partial(shm.read_input, self.shm, owner),
                                             region_output=functools.partial(shm.output_target, self.shm, owner))
            result = await model.batcher.infer(req.inputs, timeout_ms=req.timeout_ms,
                                               disconnected=lambda: _until_disconnect(receive))
            parts, header_len = kserve.encode_infer_response_parts(model.name, model.cfg.version, req,
                                                                   result.outputs, model.labels)
        except Exception as exc:
            if model is not None:
                model.metrics.on_request(False, time.perf_counter_ns() - start, _failure_reason(exc))
            if not isinstance(exc, PPDeployError):
                log.exception("infer on %s failed", scope["path"])
                exc = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            await error_response(exc)(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json" if header_len is None else b"application/octet-stream")]
        if header_len is not None:
            headers.append((b"inference-header-content-length", str(header_len).encode()))
        size = sum(len(p) for p in parts)
        encoding = _accepted_encoding(accept_encoding)
        if encoding or (len(parts) > 1 and size < SMALL_RESPONSE_BYTES):
            # Compressing needs the body in one piece; a small body goes out in one write (one syscall)
            payload = b"".join(parts)
            if encoding:
                payload = _compress(payload, encoding)
                headers.append((b"content-encoding", encoding.encode()))
            parts, size = [payload], len(payload)
        headers.append((b"content-length", str(size).encode()))
        model.metrics.on_request(True, time.perf_counter_ns() - start)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = len(parts) - 1
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})

    async def task(self, request: Request, task: type[Task]) -> Response:
        label = task.route
        try:
            service = self.host.task_of(task, request.path_params.get("model"))
            if service.state != READY:
                why = "is still loading" if service.state == "LOADING" else f"is unavailable: {service.reason}"
                raise ModelNotReady(f"{task.name} model '{service.name}' {why}")
            # Task requests wait for a pipeline thread; bound that wait like the model queues are bounded.
            if self.task_in_flight >= self.settings.max_task_queue + self.settings.task_threads:
                raise QueueFull(f"{self.task_in_flight} image requests are already in progress", 1)
            self.task_in_flight += 1
            try:
                data, content_type = await self._task_body(request)
                result = await asyncio.get_running_loop().run_in_executor(
                    self.host.task_pool, service.run, data, content_type, self.settings.max_image_pixels)
            finally:
                self.task_in_flight -= 1
        except Exception as exc:
            if not isinstance(exc, PPDeployError):
                log.exception("%s request failed", label)
                exc = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            self.metrics.task_requests.labels(label, str(_status_of(exc))).inc()
            return error_response(exc)
        self.metrics.task_requests.labels(label, "200").inc()
        return json_response(result)

    async def _task_body(self, request: Request) -> tuple[bytes, str]:
        """The payload of a task request and its content type: a raw body, or the file part of a multipart form
        (what the payload must be is the task's `decode`'s call)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            await read_body(request, self.settings.max_body_bytes)  # enforce the limit before parsing
            try:
                form = await request.form(max_files=4, max_fields=16, max_part_size=self.settings.max_body_bytes)
            except Exception as exc:  # python-multipart raises several types for malformed bodies
                raise InputError(f"malformed multipart body: {exc}") from None
            upload = None
            for key in ("image", "file"):
                value = form.get(key)
                if value is not None and hasattr(value, "read"):
                    upload = value
                    break
            if upload is None:
                upload = next((v for _, v in form.multi_items() if hasattr(v, "read")), None)
            if upload is None:
                raise InputError("multipart body has no file part; send the image as field 'image'")
            data = await upload.read()
            ctype = getattr(upload, "content_type", None) or ""
            await form.close()
        else:
            data = await read_body(request, self.settings.max_body_bytes)
        if not data:
            raise InputError("empty request body; send an image")
        return data, ctype


class _AsgiEndpoint:
    """Wraps an ASGI callable so Starlette's Route calls it as an ASGI app (a plain function would be treated as
    a request -> response endpoint)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"no route {request.method} {request.url.path}"}, 404)


def _not_allowed(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"method {request.method} is not allowed on {request.url.path}"}, 405)


def build_app(configs: list[ModelConfig], settings: ServerSettings = ServerSettings(),
              host_class: type[ModelHost] = ModelHost) -> Starlette:
    """The ASGI app serving `configs`. Models load in the background once the app starts (lifespan).
    `host_class`: where the models run (ppdeploy.serve.ray passes one whose models are Ray deployments)."""
    metrics = ServerMetrics()
    host = host_class(configs, metrics, HostOptions(cache_dir=settings.cache_dir,
                                                   strict_readiness=settings.strict_readiness,
                                                   max_image_pixels=settings.max_image_pixels,
                                                   task_threads=settings.task_threads))
    h = Handlers(host, metrics, settings)

    def versioned(path: str, endpoint, methods: list[str]) -> list[Route]:
        return [Route(f"/v2/models/{{model}}{path}", endpoint, methods=methods),
                Route(f"/v2/models/{{model}}/versions/{{version}}{path}", endpoint, methods=methods)]

    async def infer(scope, receive, send) -> None:  # reached only when ServingMiddleware is not in front
        params = scope["path_params"]
        await h.infer_asgi(scope, receive, send, params["model"], params.get("version"))

    def task_routes(task: type[Task]) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            return await h.task(request, task)

        return [Route(f"/v1/{task.route}", endpoint, methods=["POST"]),
                Route(f"/v1/{task.route}/{{model}}", endpoint, methods=["POST"])]

    routes = [
        Route("/v2", h.server_metadata, methods=["GET"]),
        Route("/v2/health/live", h.live, methods=["GET"]),
        Route("/v2/health/ready", h.ready, methods=["GET"]),
        Route("/v2/models/stats", h.model_stats, methods=["GET"]),
        Route("/v2/repository/index", h.repository_index, methods=["POST"]),
        Route("/v2/systemsharedmemory/status", h.shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/status", h.shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/register", h.shm_register, methods=["POST"]),
        Route("/v2/systemsharedmemory/unregister", h.shm_unregister, methods=["POST"]),
        Route("/v2/systemsharedmemory/region/{region}/unregister", h.shm_unregister, methods=["POST"]),
        *versioned("/infer", _AsgiEndpoint(infer), ["POST"]),
        *versioned("/ready", h.model_ready, ["GET"]),
        *versioned("/config", h.model_config, ["GET"]),
        *versioned("/stats", h.model_stats, ["GET"]),
        *versioned("", h.model_metadata, ["GET"]),
        *[route for _, task in TASKS.items() for route in task_routes(task)],
        Route("/metrics", h.prometheus, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await host.start()
        grpc_server = None
        if settings.grpc_port is not None:
            grpc_server = await start_grpc_server(host, metrics, settings, settings.grpc_port, shm=h.shm, handlers=h)
            app.state.grpc_port = grpc_server.ppdeploy_port
            log.warning("gRPC (Triton protocol) on %s:%d", settings.host, grpc_server.ppdeploy_port)
        try:
            yield
        finally:
            h.draining = True
            if grpc_server is not None:  # before the batchers close: its calls in progress finish first
                await stop_grpc_server(grpc_server, settings.drain_timeout_s)
            await host.close()
            h.shm.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _not_found, 405: _not_allowed})
    app.state.host = host
    app.state.metrics = metrics
    app.state.handlers = h
    app.state.settings = settings
    # Starlette's own exception middleware sits inside ours, so a malformed request never escapes as a 500 page.
    app.add_middleware(ServingMiddleware, settings=settings, infer=h.infer_asgi)
    return app


def settings_from_env(**overrides: Any) -> ServerSettings:
    """ServerSettings with the API key taken from PPDEPLOY_API_KEY unless given."""
    s = ServerSettings(**overrides)
    if s.api_key is None and os.environ.get("PPDEPLOY_API_KEY"):
        s.api_key = os.environ["PPDEPLOY_API_KEY"]
    return s


__all__ = ["BodyTooLarge", "Handlers", "ServerSettings", "ServingMiddleware", "build_app", "error_response",
           "settings_from_env"]
