"""`serve(configs, settings)`: the server's entry point — one process serving the app, or with `settings.workers` > 1
a supervisor of that many worker processes on one port (serve.workers). The app runs through serve.runtime.
"""
from __future__ import annotations

import sys
from typing import Callable

from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app
from ppdeploy.serve.http import ServerSettings
from ppdeploy.serve.runtime import bind_socket, run_app
from ppdeploy.serve.workers import serve_workers


def serve(configs: list[ModelConfig], settings: ServerSettings,
          announce: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a graceful drain). With `settings.workers` > 1 a
    supervisor runs that many HTTP worker processes on the same port (ppdeploy.serve.workers)."""
    if settings.workers > 1:
        return serve_workers(configs, settings, announce)
    app = build_app(configs, settings)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    (announce or (lambda m: print(m, file=sys.stderr, flush=True)))(
        f"ppdeploy serve: listening on http://{shown}:{port} ({len(configs)} model(s) loading)")
    return run_app(app, sock, settings)


__all__ = ["serve"]
