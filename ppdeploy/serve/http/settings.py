"""`ServerSettings`: how one server process serves (address, limits, API key, drain, workers, gRPC port)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ppdeploy.serve")


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 64 << 20
    max_image_pixels: int = 50_000_000
    task_threads: int = 4
    max_task_queue: int = 64  # image requests waiting for a pipeline thread before 429
    max_task_wait_s: float = 30.0  # 429 when a new image request would wait longer for a thread (0: no limit)
    strict_readiness: bool = True
    drain_timeout_s: float = 30.0
    cache_dir: str | None = None
    workers: int = 1  # HTTP worker processes (ppdeploy.serve.workers); 1: this process serves
    worker_id: int | None = None  # set in each worker of --workers N: its index, written to the access log
    grpc_port: int | None = None  # Triton's gRPC protocol on this port too (0: a free one); None: HTTP only



def settings_from_env(**overrides: Any) -> ServerSettings:
    """ServerSettings with the API key taken from PPDEPLOY_API_KEY unless given."""
    s = ServerSettings(**overrides)
    if s.api_key is None and os.environ.get("PPDEPLOY_API_KEY"):
        s.api_key = os.environ["PPDEPLOY_API_KEY"]
    return s
