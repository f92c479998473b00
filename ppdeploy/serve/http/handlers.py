"""`Handlers`: the endpoints of the HTTP app (KServe v2 / Triton routes, shared memory, task routes, metrics)."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time

from starlette.requests import Request
from starlette.responses import Response

from ppdeploy import __version__
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.serve import kserve, shm
from ppdeploy.serve.batcher import (
    InferenceFailed,
)
from ppdeploy.serve.errors import failure_reason, status_of
from ppdeploy.serve.http.bodies import (
    accepted_encoding,
    compress,
    decode_body,
    read_body,
    receive_body,
    until_disconnect,
)
from ppdeploy.serve.http.responses import error_response, json_response
from ppdeploy.serve.http.settings import ServerSettings
from ppdeploy.serve.http.task_queue import TaskQueue, flag_disconnect
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import (
    READY,
    ModelHost,
    ModelNotReady,
    ServedModel,
)
from ppdeploy.tasks.base import Task

log = logging.getLogger("ppdeploy.serve")


SMALL_RESPONSE_BYTES = 65536  # below this, joining the response's parts is cheaper than a write per part
EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_repository", "system_shared_memory"]


class Handlers:
    """Route handlers bound to one server's state."""

    def __init__(self, host: ModelHost, metrics: ServerMetrics, settings: ServerSettings):
        self.host = host
        self.metrics = metrics
        self.settings = settings
        self.draining = False
        self.tasks = TaskQueue(settings.task_threads, settings.max_task_queue, settings.max_task_wait_s)
        # --workers N: the sibling workers (ppdeploy.serve.workers.Peers). Readiness, /metrics and /stats answer
        # for the whole server, whichever worker the client reached.
        self.peers = None
        self.shm = shm.SharedMemoryRegistry()  # one namespace of regions per server, for HTTP and gRPC alike

    # -- lookup ---------------------------------------------------------------------------------------------
    def _model(self, request: Request, need_ready: bool = True) -> ServedModel:
        return self.host.tensor_model(request.path_params["model"], request.path_params.get("version"), need_ready)

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
            model = self.host.tensor_model(name, version)
            body = await receive_body(receive)
            if content_encoding:
                body = decode_body(body, content_encoding, self.settings.max_body_bytes)
            owner = self._shm_owner(auth, api_key, client_tag)
            req = kserve.parse_infer_request(body, header_length, model.io,
                                             region_input=functools.partial(shm.read_input, self.shm, owner),
                                             region_output=functools.partial(shm.output_target, self.shm, owner))
            result = await model.batcher.infer(req.inputs, timeout_ms=req.timeout_ms,
                                               disconnected=lambda: until_disconnect(receive))
            parts, header_len = kserve.encode_infer_response_parts(model.name, model.cfg.version, req,
                                                                   result.outputs, model.labels)
        except Exception as exc:
            if model is not None:
                model.metrics.on_request(False, time.perf_counter_ns() - start, failure_reason(exc))
            if not isinstance(exc, PPDeployError):
                log.exception("infer on %s failed", scope["path"])
                exc = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            await error_response(exc)(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json" if header_len is None else b"application/octet-stream")]
        if header_len is not None:
            headers.append((b"inference-header-content-length", str(header_len).encode()))
        size = sum(len(p) for p in parts)
        encoding = accepted_encoding(accept_encoding)
        if encoding or (len(parts) > 1 and size < SMALL_RESPONSE_BYTES):
            # Compressing needs the body in one piece; a small body goes out in one write (one syscall)
            payload = b"".join(parts)
            if encoding:
                payload = compress(payload, encoding)
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
            # Task requests wait for a pipeline thread; bound that wait (ppdeploy.serve.http.task_queue).
            self.tasks.admit()
            try:
                data, content_type = await self._task_body(request)
                gone = threading.Event()
                watcher = asyncio.ensure_future(flag_disconnect(request.receive, gone))
                try:
                    work = functools.partial(service.run, data, content_type, self.settings.max_image_pixels)
                    result = await asyncio.get_running_loop().run_in_executor(
                        self.host.task_pool, self.tasks.run, work, gone, time.monotonic())
                finally:
                    watcher.cancel()
            finally:
                self.tasks.release()
        except Exception as exc:
            if not isinstance(exc, PPDeployError):
                log.exception("%s request failed", label)
                exc = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            self.metrics.task_requests.labels(label, str(status_of(exc))).inc()
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
