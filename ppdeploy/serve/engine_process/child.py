"""The engine process's main loop: load the model, report, then serve calls until told to close.

A private child serves its one caller's calls as they are read; a shared engine serves every connection to its
listening socket through the merge scheduler (ppdeploy.serve.engine_process.merge). Ctrl-C and SIGTERM are the
server's to handle; a child whose parent is gone reads EOF and exits.
"""
from __future__ import annotations

import os
import signal
import socket

from ppdeploy.deploy.load import load_model
from ppdeploy.serve.engine_process.errors import encode_error
from ppdeploy.serve.engine_process.merge import Connection, Engine
from ppdeploy.serve.engine_process.protocol import (
    Channel,
    LoadRequest,
    PeerGone,
    ProtocolViolation,
)


def main(control_fd: int, listen_fd: int = -1) -> None:
    # Ctrl-C and a SIGTERM to the process group are the server's to handle (it drains, then closes us); a child
    # whose parent is gone reads EOF and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = Channel(socket.socket(fileno=control_fd))
    try:
        msg = control.recv()
    except (PeerGone, ProtocolViolation):
        return
    request = msg[1] if msg[0] == "load" and len(msg) == 2 else None
    if not isinstance(request, LoadRequest):
        return
    try:
        dep = load_model(request.source, backend=request.backend, **request.kwargs)
    except BaseException as exc:
        try:
            control.send(("error", encode_error(exc)))
        except PeerGone:
            pass
        return
    runner = dep.runner
    info = {"io": runner.io, "backend": dep.backend, "attempts": list(dep.attempts), "cache_hit": dep.cache_hit,
            "pid": os.getpid(), "max_batch_size": request.max_batch_size}
    try:
        control.send(("ready", info))
        engine = Engine(runner, request.max_batch_size, request.kwargs.get("shapes"))
        if listen_fd < 0:
            # PPDEPLOY_ENGINE_PROCESS_SPIN_US: poll this long for the next request before sleeping in the read,
            # trading a busy core for the wake-up latency of a sleeping process (an experiment knob for a private
            # child; 0, the default, never spins).
            spin_s = float(os.environ.get("PPDEPLOY_ENGINE_PROCESS_SPIN_US", "0")) / 1e6
            engine.serve_one(Connection(control, request.label), spin_s)
        else:
            engine.serve_listener(socket.socket(fileno=listen_fd), control, info)
    except PeerGone:
        pass
    finally:
        try:
            dep.close()
        except Exception:
            pass
        control.close()


__all__ = ["main"]
