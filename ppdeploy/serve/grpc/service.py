"""Triton's `GRPCInferenceService` over the HTTP app's `ModelHost`: same models, batchers, checks and metrics.

Every call but ServerLive/ServerReady needs the API key when the server has one (metadata `authorization: Bearer
KEY` or `x-api-key: KEY`). Errors carry the HTTP answer's message, with the gRPC code of its HTTP status:
InputError 400 -> INVALID_ARGUMENT, unknown model 404 -> NOT_FOUND, not ready / shutting down 503 -> UNAVAILABLE,
queue full 429 -> RESOURCE_EXHAUSTED (trailing metadata `retry-after`), queue timeout -> DEADLINE_EXCEEDED,
client gone -> CANCELLED, anything else -> INTERNAL. Once draining, new calls get UNAVAILABLE while the ones in
progress finish. A gRPC deadline also bounds the time a request may wait in the model's queue. Each call but
health writes one JSON line to the `ppdeploy.access` logger, like an HTTP request.
Streaming inference, CUDA shared memory, model load/unload, trace and log settings answer UNIMPLEMENTED.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from ppdeploy import __version__
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.serve import kserve, shm
from ppdeploy.serve.batcher import (
    BatcherClosed,
    ClientGone,
    InferenceFailed,
    QueueFull,
    RequestTimeout,
    ServingError,
)
from ppdeploy.serve.errors import failure_reason, message
from ppdeploy.serve.grpc import codec
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import (
    READY,
    ModelHost,
    ModelNotFound,
    ModelNotReady,
)

grpc = lazy_import("grpc", install="grpcio")
pb = lazy_import("tritonclient.grpc.service_pb2", install="'tritonclient[grpc]'")
model_config_pb2 = lazy_import("tritonclient.grpc.model_config_pb2", install="'tritonclient[grpc]'")
json_format = lazy_import("google.protobuf.json_format", install="protobuf")

log = logging.getLogger("ppdeploy.serve")
access_log = logging.getLogger("ppdeploy.access")

EXTENSIONS = ["classification", "statistics", "model_repository", "system_shared_memory"]
CLIENT_TAG = "x-ppdeploy-client"  # optional metadata: a shared-memory namespace within one API key
UNAUTHORIZED = "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"


def status_code(exc: BaseException):
    """The gRPC status code of an error, from the HTTP status the same error gets."""
    C = grpc.StatusCode
    if isinstance(exc, QueueFull):
        return C.RESOURCE_EXHAUSTED
    if isinstance(exc, RequestTimeout):
        return C.DEADLINE_EXCEEDED
    if isinstance(exc, ClientGone):
        return C.CANCELLED
    if isinstance(exc, (ModelNotFound, shm.RegionNotFound)):
        return C.NOT_FOUND
    if isinstance(exc, shm.RegionExists):
        return C.ALREADY_EXISTS
    if isinstance(exc, (ModelNotReady, BatcherClosed)) or (isinstance(exc, ServingError) and exc.status == 503):
        return C.UNAVAILABLE
    if isinstance(exc, InputError):
        return C.INVALID_ARGUMENT
    return C.INTERNAL


class InferenceService:
    """The servicer (registered with `add_GRPCInferenceServiceServicer_to_server`). `handlers`: the HTTP app's
    `Handlers`, when given its `draining` flag (set on SIGTERM) and `peers` (--workers N) count here too."""

    def __init__(self, host: ModelHost, metrics: ServerMetrics, settings, registry: shm.SharedMemoryRegistry,
                 handlers: Any = None):
        self.host = host
        self.metrics = metrics
        self.settings = settings
        self.shm = registry
        self.handlers = handlers
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._key = settings.api_key.encode() if settings.api_key else None
        self._worker = getattr(settings, "worker_id", None)

    # -- plumbing -------------------------------------------------------------------------------------------
    def _shutting_down(self) -> bool:
        return self.draining or bool(getattr(self.handlers, "draining", False))

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no call is in progress (False when `timeout_s` passed first)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def _credentials(self, context) -> tuple[bytes | None, str | None]:
        given = tag = None
        for k, v in context.invocation_metadata() or ():
            if k == "authorization" and given is None:
                if isinstance(v, str) and v[:7].lower() == "bearer ":
                    given = v[7:].strip().encode()
            elif k == "x-api-key" and given is None:
                given = str(v).strip().encode()
            elif k == CLIENT_TAG:
                tag = str(v)
        return given, tag

    def _owner(self, context) -> str:
        given, tag = self._credentials(context)
        return shm.owner_of(given if self._key is not None else None, tag)

    async def _call(self, context, rpc: str, fn, *args):
        """Run one call: API key, drain, in-flight count, errors -> status codes, the access log line."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if self._key is not None:
                given, _ = self._credentials(context)
                if given is None or not hmac.compare_digest(given, self._key):
                    code = grpc.StatusCode.UNAUTHENTICATED
                    await context.abort(code, UNAUTHORIZED)
            if self._shutting_down():
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, "server is shutting down")
            self.in_flight += 1
            self._idle.clear()
            try:
                return await fn(*args)
            except PPDeployError as exc:
                error = exc
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # a bug, not a bad request; still answer it, and log it
                log.exception("gRPC %s failed", rpc)
                error = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()
            code = status_code(error)
            if code == grpc.StatusCode.INTERNAL:
                log.error("request failed: %s", message(error))
            if isinstance(error, QueueFull):
                context.set_trailing_metadata((("retry-after", str(error.retry_after_s)),))
            await context.abort(code, message(error))
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "protocol": "grpc", "method": rpc, "status": code.name,
                    "ms": round((time.perf_counter() - start) * 1e3, 3), "client": context.peer(),
                    **({} if self._worker is None else {"worker": self._worker}),
                }, separators=(",", ":")))

    # -- health and metadata --------------------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        ok = self.host.ready() and not self._shutting_down()
        peers = getattr(self.handlers, "peers", None)
        if ok and peers is not None:
            ok = await peers.all_ready()
        return pb.ServerReadyResponse(ready=ok)

    async def ModelReady(self, request, context):
        async def run():
            try:
                self.host.tensor_model(request.name, request.version)
                return pb.ModelReadyResponse(ready=True)
            except ModelNotReady:
                return pb.ModelReadyResponse(ready=False)
        return await self._call(context, "ModelReady", run)

    async def ServerMetadata(self, request, context):
        async def run():
            return pb.ServerMetadataResponse(name="ppdeploy", version=__version__, extensions=EXTENSIONS)
        return await self._call(context, "ServerMetadata", run)

    async def ModelMetadata(self, request, context):
        async def run():
            m = self.host.tensor_model(request.name, request.version)
            meta = kserve.model_metadata(m.name, m.cfg.version, m.io, m.engine.backend)
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())
        return await self._call(context, "ModelMetadata", run)

    async def ModelConfig(self, request, context):
        async def run():
            m = self.host.tensor_model(request.name, request.version)
            conf = kserve.model_config_json(m.cfg, m.io, m.engine.backend, m.batcher.batch_axis)
            return pb.ModelConfigResponse(
                config=json_format.ParseDict(conf, model_config_pb2.ModelConfig(), ignore_unknown_fields=True))
        return await self._call(context, "ModelConfig", run)

    async def ModelStatistics(self, request, context):
        async def run():
            if request.name:
                names = [self.host.tensor_model(request.name, request.version, need_ready=False).name]
            else:
                names = list(self.host.models)
            peers = getattr(self.handlers, "peers", None)
            metrics = await peers.merged_metrics() if peers is not None else self.metrics
            stats = {"model_stats": [metrics.model(n).statistics() for n in names]}
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
        return await self._call(context, "ModelStatistics", run)

    async def RepositoryIndex(self, request, context):
        async def run():
            resp = pb.RepositoryIndexResponse()
            tasks = [t for n, t in self.host.tasks.items() if n not in self.host.models]
            for m in [*self.host.models.values(), *tasks]:
                if request.ready and m.state != READY:
                    continue
                resp.models.add(name=m.name, version=m.cfg.version, state=m.state, reason=m.reason or "")
            return resp
        return await self._call(context, "RepositoryIndex", run)

    # -- inference ------------------------------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        return await self._call(context, "ModelInfer", self._infer, request, context)

    async def _infer(self, request, context):
        start = time.perf_counter_ns()
        model = None
        try:
            model = self.host.tensor_model(request.model_name, request.model_version)
            decoded = codec.decode_request(request, model.io, self.shm, self._owner(context))
            timeout_ms = decoded.timeout_ms
            remaining = context.time_remaining()
            if remaining is not None:  # a gRPC deadline bounds the queue wait too
                deadline_ms = max(remaining * 1e3, 1e-3)
                timeout_ms = deadline_ms if not timeout_ms else min(timeout_ms, deadline_ms)
            result = await model.batcher.infer(decoded.inputs, timeout_ms=timeout_ms)
            response = codec.encode_response(model.name, model.cfg.version, request.id, decoded, result.outputs,
                                             model.labels)
        except BaseException as exc:
            if model is not None:
                model.metrics.on_request(False, time.perf_counter_ns() - start, failure_reason(exc))
            raise
        model.metrics.on_request(True, time.perf_counter_ns() - start)
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        await self._unimplemented(context, "streaming inference (ModelStreamInfer)")

    # -- system shared memory -------------------------------------------------------------------------------
    async def SystemSharedMemoryRegister(self, request, context):
        async def run():
            self.shm.register(self._owner(context), request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()
        return await self._call(context, "SystemSharedMemoryRegister", run)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def run():
            self.shm.unregister(self._owner(context), request.name)
            return pb.SystemSharedMemoryUnregisterResponse()
        return await self._call(context, "SystemSharedMemoryUnregister", run)

    async def SystemSharedMemoryStatus(self, request, context):
        async def run():
            resp = pb.SystemSharedMemoryStatusResponse()
            for r in self.shm.status(self._owner(context), request.name):
                resp.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
            return resp
        return await self._call(context, "SystemSharedMemoryStatus", run)

    # -- not offered ----------------------------------------------------------------------------------------
    async def _unimplemented(self, context, what: str):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")

    async def CudaSharedMemoryStatus(self, request, context):
        await self._unimplemented(context, "CUDA shared memory")

    async def CudaSharedMemoryRegister(self, request, context):
        await self._unimplemented(context, "CUDA shared memory")

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._unimplemented(context, "CUDA shared memory")

    async def RepositoryModelLoad(self, request, context):
        await self._unimplemented(context, "loading models (RepositoryModelLoad)")

    async def RepositoryModelUnload(self, request, context):
        await self._unimplemented(context, "unloading models (RepositoryModelUnload)")

    async def TraceSetting(self, request, context):
        await self._unimplemented(context, "tracing")

    async def LogSettings(self, request, context):
        await self._unimplemented(context, "log settings")


__all__ = ["EXTENSIONS", "InferenceService", "status_code"]
