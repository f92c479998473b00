"""Starting, stopping and supervising engine processes.

`spawn_engine` starts a fresh interpreter (never a fork after paddle / openvino / CUDA are loaded) that loads
the model (ppdeploy.serve.engine_process.child) and reports what it loaded. `SharedEngine` is one such process at
a unix socket in a private 0700 run directory (`listen_privately`), for any number of callers of this uid (the
child checks each peer's uid too). It keeps the listening socket, so the address outlives a child and callers
that connect during a restart wait in its backlog instead of being refused.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

import ppdeploy
from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.core.tensors import IOSpec
from ppdeploy.serve.engine_process.arena import require_memfd
from ppdeploy.serve.engine_process.errors import EngineProcessDied, rebuild_error
from ppdeploy.serve.engine_process.protocol import (
    Channel,
    LoadRequest,
    PeerGone,
    encode,
    write_holding_gil,
)

log = logging.getLogger("ppdeploy.serve.engine_process")

_CHILD_ENTRY = ("import sys; from ppdeploy.serve.engine_process.child import main; "
                "main(*map(int, sys.argv[1:]))")


class SharedEngine:
    """One engine process at a unix socket address, for any number of `connect_engine` callers (worker processes),
    whose concurrent calls it merges. The supervisor keeps the listening socket, so the address outlives a child:
    `ensure_running()` starts a fresh one there (pinned to the backend the first one chose)."""

    _numbers = itertools.count(1)

    def __init__(self, request: LoadRequest, listener: socket.socket, address: str):
        self._request = request
        self._listener = listener
        self.address = address
        self.max_batch_size = request.max_batch_size
        self._lock = threading.Lock()
        self._proc = None
        self._control: Channel | None = None
        self._closed = False
        self.restarts = 0
        self.backend = ""
        self.attempts: list[Any] = []
        self.cache_hit: bool | None = None
        self.io: IOSpec | None = None

    @classmethod
    def start(cls, source: Any, *, backend: Any = "auto", label: str, max_batch_size: int,
              **load_model_kwargs: Any) -> SharedEngine:
        require_memfd()
        request = LoadRequest(source, backend, dict(load_model_kwargs), label, int(max_batch_size or 0))
        listener, address = listen_privately(f"engine-{next(cls._numbers)}", label)
        engine = cls(request, listener, address)
        try:
            engine._spawn()
        except BaseException:
            listener.close()
            remove_socket(address)
            raise
        engine._request = dataclasses.replace(request, backend=[engine.backend])
        return engine

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        proc, control, info = spawn_engine(self._request, self._listener)
        self._proc, self._control = proc, control
        self.backend, self.attempts, self.cache_hit = info["backend"], list(info.get("attempts") or []), info.get(
            "cache_hit")
        self.io = info["io"]

    def ensure_running(self) -> bool:
        """Start a fresh engine process at the same address if the current one has exited; True if it did. A load
        that fails raises (and the next call tries again)."""
        with self._lock:
            if self._closed:
                raise PPDeployError(f"the shared engine of '{self._request.label}' is closed")
            if self._proc is not None and self._proc.poll() is None:
                return False
            pid = self.pid
            code = reap(self._proc, self._control)
            self._proc = self._control = None
            log.warning("engine process of %s (pid %s) exited (%s); starting a new one at %s", self._request.label,
                        pid, exit_text(code), self.address)
            self._spawn()
            self.restarts += 1
            return True

    def close(self) -> None:
        """Stop the engine process (connected callers read EOF) and free the address. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._listener.close()
            remove_socket(self.address)
            stop(self._proc, self._control)
            self._proc = self._control = None

    def __del__(self):  # dropped without close(): don't leave the child running until the supervisor exits
        try:
            self.close()
        except Exception:
            pass


def run_dir_base() -> str:
    """Where private run directories go: $XDG_RUNTIME_DIR when it is ours (a per-user 0700 tmpfs), else the
    temporary directory (each run directory is 0700 itself, so either is private)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            if st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return xdg
        except OSError:
            pass
    return tempfile.gettempdir()


def listen_privately(name: str, label: str) -> tuple[socket.socket, str]:
    """A listening unix socket at `<fresh 0700 run directory>/<name>.sock`: (socket, its path). Only this uid can
    reach it (the directory's permissions), and the engine process checks every peer's uid as well (SO_PEERCRED)."""
    run_dir = tempfile.mkdtemp(prefix="ppdeploy-", dir=run_dir_base())  # created 0700, owned by us
    address = os.path.join(run_dir, f"{name}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen(socket.SOMAXCONN)
    except OSError as exc:
        listener.close()
        remove_socket(address)
        raise PPDeployError(f"cannot listen at {address!r} for the engine of '{label}': {exc}",
                            hint="unix socket paths are limited to 107 bytes: set TMPDIR to a shorter "
                                 "directory") from None
    return listener, address


def remove_socket(address: str) -> None:
    """Remove a socket made by `listen_privately`, and its run directory."""
    for fn, path in ((os.unlink, address), (os.rmdir, os.path.dirname(address))):
        try:
            fn(path)
        except OSError:
            pass


def child_env() -> dict[str, str]:
    """The environment of a fresh interpreter started from this one (engine process, --workers worker): ours, with
    this checkout's ppdeploy first on PYTHONPATH, so the child imports the same code even when it is not installed."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ppdeploy.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def spawn_engine(request: LoadRequest, listener: socket.socket | None = None) -> tuple[Any, Channel, dict]:
    """Start an engine process and have it load `request`; (process, control channel, what it loaded). With a
    `listener` the child serves every connection to it; without, it serves the control channel only."""
    # A fresh interpreter (fork + exec at once: nothing of paddle / openvino / CUDA is inherited), not
    # multiprocessing's spawn, which would re-run the caller's __main__ script in the child.
    try:
        frame = encode(("load", request))  # a load argument that cannot cross fails here, before a process starts
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the engine process of '{request.label}' cannot be started: {exc}",
                          hint="run this model in-process (engine_process: false)") from None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = child_env()
    argv, fds = [sys.executable, "-c", _CHILD_ENTRY, str(child.fileno())], [child.fileno()]
    if listener is not None:
        argv.append(str(listener.fileno()))
        fds.append(listener.fileno())
    try:
        proc = subprocess.Popen(argv, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        parent.close()
        raise PPDeployError(f"cannot start the engine process of '{request.label}': {exc}") from None
    finally:
        child.close()  # only the child holds its end now: its death reads as EOF here
    chan = Channel(parent, hold_gil=True)
    try:
        write_holding_gil(chan.fd, frame)
        reply = chan.recv()
    except PeerGone:
        code = reap(proc, chan)
        raise EngineProcessDied(f"the engine process of '{request.label}' exited while loading "
                                f"({exit_text(code)})") from None
    if reply[0] == "error":
        reap(proc, chan)
        raise rebuild_error(reply[1])
    log.info("engine process of %s: pid %d, %s", request.label, proc.pid, reply[1]["backend"])
    return proc, chan, reply[1]


def stop(proc, chan: Channel | None) -> None:
    """Ask the child to close (it releases its engine), then reap it."""
    if chan is not None:
        try:
            chan.send(("close",))
        except PeerGone:
            pass
    reap(proc, chan, timeout=10.0)


def reap(proc, chan: Channel | None, timeout: float = 5.0) -> int | None:
    """Close the control channel (a child still reading sees EOF and exits) and wait for the child (or kill it)."""
    if chan is not None:
        chan.close()
    if proc is None:
        return None
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def exit_text(code: int | None) -> str:
    """A child process's exit status in words (Popen.returncode: negative for a signal)."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


__all__ = ["SharedEngine", "child_env", "exit_text", "listen_privately", "reap", "remove_socket", "run_dir_base",
           "spawn_engine", "stop"]
