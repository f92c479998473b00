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

import contextlib
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.grpc import start_grpc_server
from ppdeploy.serve.grpc import stop as stop_grpc_server
from ppdeploy.serve.http.handlers import Handlers
from ppdeploy.serve.http.middleware import ServingMiddleware
from ppdeploy.serve.http.responses import json_response
from ppdeploy.serve.http.settings import ServerSettings
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import (
    HostOptions,
    ModelHost,
)
from ppdeploy.tasks.base import Task
from ppdeploy.tasks.registry import TASKS

log = logging.getLogger("ppdeploy.serve")

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
            log.info("gRPC (Triton protocol) on %s:%d", settings.host, grpc_server.ppdeploy_port)
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


__all__ = ["build_app"]
