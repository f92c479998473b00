"""Run one ASGI app on a listening socket under uvicorn, with graceful shutdown.

SIGTERM (or Ctrl+C): readiness turns false, the listening socket closes (no new connections), requests already
received finish — including everything queued in the batchers — then the batchers drain and engines close, and
the process exits 0. `drain_timeout_s` bounds the wait for in-flight requests. Both the single-process server
(serve.server) and each worker of `--workers N` (serve.workers) run their app through `run_app`.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Awaitable, Callable

from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.serve.http import ServerSettings

log = logging.getLogger("ppdeploy.serve")


def _event_loop() -> str:
    """uvloop when installed, unless PPDEPLOY_EVENT_LOOP=asyncio asks for the standard library's loop (whose
    socket calls release the GIL, which can matter when inference threads compete with multi-MB responses)."""
    wanted = os.environ.get("PPDEPLOY_EVENT_LOOP", "auto")
    if wanted not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"PPDEPLOY_EVENT_LOOP must be auto, uvloop or asyncio, got '{wanted}'")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401  (optional: a faster event loop when installed)

        return "uvloop"
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError("PPDEPLOY_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return "asyncio"


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401

        return "httptools"
    except ImportError:
        return "h11"


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind before starting uvicorn so port 0 works (the chosen port is printed) and errors are ours to word.
    `reuse_port`: SO_REUSEPORT, so several listening sockets (one per worker of --workers N) share the port and
    the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio's default loop sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
    # accepted sockets copy it. With proto 0 every response of headers + body (two writes) waited for the client's
    # delayed ACK: 44 ms per request without uvloop (uvloop sets TCP_NODELAY itself).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PPDeployError(f"cannot listen on {host}:{port}: {exc.strerror}",
                            hint="pick another --port, or stop the process using it") from None
    sock.set_inheritable(True)
    return sock


def gil_switch_interval_s() -> float | None:
    """PPDEPLOY_GIL_SWITCH_MS: the interpreter's thread switch interval for the server process (unset: Python's
    5 ms). The event loop thread and the inference threads share the GIL; a shorter interval hands it over sooner
    when the loop is busy. No measured gain so far (BENCHMARKS.md), so the default stays Python's."""
    raw = os.environ.get("PPDEPLOY_GIL_SWITCH_MS")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise ConfigError(f"PPDEPLOY_GIL_SWITCH_MS must be a number of milliseconds, got '{raw}'") from None
    if not 0.01 <= ms <= 100:
        raise ConfigError(f"PPDEPLOY_GIL_SWITCH_MS must be between 0.01 and 100, got {ms:g}")
    return ms / 1e3


def run_app(app, sock: socket.socket, settings: ServerSettings,
            on_started: Callable[[], Awaitable[None]] | None = None,
            on_stopping: Callable[[], None] | None = None) -> int:
    """uvicorn on `sock` (bound, not yet listening) until SIGTERM/SIGINT, then the graceful drain; closes `sock`.
    `on_started`: awaited on the server's loop once the app started (a worker's peer socket); `on_stopping`: called
    on the first signal."""
    import uvicorn

    interval = gil_switch_interval_s()
    if interval is not None:
        sys.setswitchinterval(interval)

    config = uvicorn.Config(app, loop=_event_loop(), http=_http_impl(), lifespan="on", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=settings.drain_timeout_s,
                            timeout_keep_alive=30, server_header=False)
    handlers = app.state.handlers

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):  # runs on the signal: stop reporting ready before draining starts
            handlers.draining = True
            if not self.should_exit:
                log.warning("signal %s: draining in-flight requests, then exiting", sig)
                if on_stopping is not None:
                    on_stopping()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if on_started is not None and not self.should_exit:
                await on_started()

    server = DrainingServer(config)
    # uvicorn re-raises the caught signal after its graceful shutdown, which would end the process with -15
    # instead of 0; a no-op SIGTERM handler turns that re-raise into a normal return.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0 if server.started else 1


__all__ = ["bind_socket", "gil_switch_interval_s", "run_app"]
