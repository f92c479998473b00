"""Start and drain the gRPC server (grpc.aio) on the serving event loop, beside the HTTP app.

`start_grpc_server` binds `settings.host:port` (port 0 picks a free one: read `server.ppdeploy_port`) with the HTTP
body limit (`settings.max_body_bytes`) as the largest message it accepts; larger ones get RESOURCE_EXHAUSTED from
gRPC itself. `stop` drains: new calls get UNAVAILABLE, calls in progress (their requests queued in the batchers
included) finish within `grace_s`, then the server stops. Call it before `ModelHost.close()`.
"""
from __future__ import annotations

import time
from typing import Any

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.serve.grpc.service import InferenceService
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import ModelHost
from ppdeploy.serve.shm import SharedMemoryRegistry

grpc = lazy_import("grpc", install="grpcio")
service_pb2_grpc = lazy_import("tritonclient.grpc.service_pb2_grpc", install="'tritonclient[grpc]'")


async def start_grpc_server(host: ModelHost, metrics: ServerMetrics, settings, port: int, *,
                            shm: SharedMemoryRegistry | None = None, handlers: Any = None):
    """A started `grpc.aio.Server` serving `host`'s models on `settings.host:port`.

    `shm`: the registry the HTTP routes use too (one namespace of regions per server); None: a private one, closed
    by `stop`. `handlers`: the HTTP app's Handlers (its draining flag and --workers peers apply to gRPC too)."""
    service = InferenceService(host, metrics, settings, shm if shm is not None else SharedMemoryRegistry(), handlers)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
    ])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = f"[{settings.host}]:{port}" if ":" in settings.host else f"{settings.host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, why = 0, str(exc)
    else:
        why = "the address is in use or not available"
    if not bound:
        raise PPDeployError(f"cannot listen for gRPC on {address}: {why}",
                            hint="pick another --grpc-port, or stop the process using it")
    await server.start()
    server.ppdeploy_port = bound
    server.ppdeploy_service = service
    server.ppdeploy_owns_shm = shm is None
    return server


async def stop(server, grace_s: float) -> None:
    """Drain and stop: refuse new calls, let those in progress finish (at most `grace_s`), then stop."""
    service: InferenceService = server.ppdeploy_service
    service.draining = True
    start = time.monotonic()
    await service.wait_idle(grace_s)
    await server.stop(max(0.0, grace_s - (time.monotonic() - start)))
    if server.ppdeploy_owns_shm:
        service.shm.close()


__all__ = ["start_grpc_server", "stop"]
