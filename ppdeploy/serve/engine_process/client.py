"""The caller's side: a `Runner` whose engine runs in another process (`EngineProcessRunner`).

`load_model_in_process` starts a private child that the runner owns (it starts another when it dies);
`connect_engine` connects to a `SharedEngine`'s address (its supervisor restarts it). `infer` validates in the
caller (the same InputErrors, no round trip), copies the inputs into this connection's input arena, and returns
the outputs as views of an output arena, leased until the last of them is garbage-collected (no copy). A child
that dies during a call raises EngineProcessDied (503); the next call starts or reconnects to a fresh one.
"""
from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec
from ppdeploy.serve.engine_process.arena import (
    ALIGN,
    Arena,
    close_map,
    grown,
    make_arena,
    nbytes,
    plan,
    release,
    require_memfd,
)
from ppdeploy.serve.engine_process.errors import (
    EngineProcessDied,
    EngineProcessUnreachable,
    rebuild_error,
)
from ppdeploy.serve.engine_process.protocol import (
    Channel,
    LoadRequest,
    PeerGone,
    ProtocolViolation,
    peer_uid,
)
from ppdeploy.serve.engine_process.supervisor import exit_text, reap, spawn_engine, stop

log = logging.getLogger("ppdeploy.serve.engine_process")

_MAX_FREE_OUTPUT_ARENAS = 2
_REPLY_TAGS = frozenset({"$tuple", "$io", "$attempt", "$path"})  # what an engine process's replies may carry


@dataclass
class EngineProcessDeployment:
    """The part of `ppdeploy.deploy.load.Deployment` the server uses, for an engine that runs in another process."""

    runner: EngineProcessRunner
    backend: str
    attempts: list[Any] = field(default_factory=list)
    cache_hit: bool | None = None

    def close(self) -> None:
        self.runner.close()


def load_model_in_process(source: Any, *, backend: Any = "auto", label: str | None = None,
                          on_restart: Callable[[], None] | None = None, **kwargs: Any) -> EngineProcessDeployment:
    """`ppdeploy.deploy.load.load_model(source, backend=..., **kwargs)`, run in a private child process. Restarts reuse
    the backend the first start settled on (no silent switch to another backend of the chain)."""
    require_memfd()
    request = LoadRequest(source, backend, dict(kwargs), label or str(source))
    shapes = kwargs.get("shapes")
    runner = EngineProcessRunner(_OwnChild(request), shapes=shapes if isinstance(shapes, ShapeProfile) else None,
                                 on_restart=on_restart)
    return _deployment(runner)


def connect_engine(address: str, *, label: str, shapes: ShapeProfile | None = None,
                   timeout_s: float = 30.0) -> EngineProcessDeployment:
    """Connect to the engine process a `SharedEngine` serves at `address`. The runner validates against `shapes`
    (the model's profile) like an in-process one; a connect, or a reconnect after the engine died, waits up to
    `timeout_s` for the engine to answer, then raises `EngineProcessUnreachable`."""
    require_memfd()
    runner = EngineProcessRunner(_EngineAddress(address, label, timeout_s), shapes=shapes)
    return _deployment(runner)


def _deployment(runner: EngineProcessRunner) -> EngineProcessDeployment:
    info = runner.load_info
    return EngineProcessDeployment(runner, info["backend"], list(info.get("attempts") or []), info.get("cache_hit"))


class _OwnChild:
    """`load_model_in_process`: the runner starts its engine process, owns it and starts another when it dies."""

    restart_text = "the next call starts a new one"

    def __init__(self, request: LoadRequest):
        self.request = request
        self.label = request.label
        self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def open(self) -> tuple[Channel, dict]:
        self._proc, chan, info = spawn_engine(self.request)
        # Pin the backend the first child chose, so a restart loads the same engine from the cache.
        self.request = dataclasses.replace(self.request, backend=[info["backend"]])
        return chan, info

    def lost(self, chan: Channel | None) -> str:
        code = reap(self._proc, chan)
        self._proc = None
        return exit_text(code)

    def close(self, chan: Channel | None) -> None:
        stop(self._proc, chan)
        self._proc = None


class _EngineAddress:
    """`connect_engine`: the runner connects to a shared engine's address; its supervisor restarts the process."""

    restart_text = "the next call reconnects once its supervisor has restarted it"

    def __init__(self, address: str, label: str, timeout_s: float):
        self.address, self.label, self.timeout_s = address, label, float(timeout_s)
        self.pid: int | None = None

    def open(self) -> tuple[Channel, dict]:
        chan, info = _connect(self.address, self.label, self.timeout_s)
        self.pid = info.get("pid")
        return chan, info

    def lost(self, chan: Channel | None) -> str:
        if chan is not None:
            chan.close()
        self.pid = None
        return "exit status: see its supervisor's log"

    def close(self, chan: Channel | None) -> None:
        self.lost(chan)


def _connect(address: str, label: str, timeout_s: float) -> tuple[Channel, dict]:
    """Connect and say hello, retrying while nothing listens or the engine dies before answering."""
    deadline = time.monotonic() + timeout_s
    why = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineProcessUnreachable(
                f"no engine process answered '{label}' at {address!r} within {timeout_s:g} s ({why})",
                hint="the shared engine's supervisor starts it (SharedEngine.start / ensure_running); check that "
                     "it runs and that the address is the one it reported") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)  # a full backlog makes connect wait
            sock.connect(address)
            sock.settimeout(None)
        except (OSError, ValueError) as exc:
            sock.close()
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            continue
        owner = peer_uid(sock)
        if owner != os.getuid():  # never talk to another user's process, whatever it listens at
            sock.close()
            raise EngineProcessUnreachable(
                f"the process listening at {address!r} for '{label}' runs as uid {owner}, not as this server's "
                f"uid {os.getuid()}; refusing to use it",
                hint="the shared engine must be started by this server's own supervisor")
        chan = Channel(sock, hold_gil=True, tags=_REPLY_TAGS)
        try:
            chan.send(("hello", label))
            # A supervisor restarting its engine keeps the address: the hello waits in the backlog till it's up.
            reply = chan.recv(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            chan.close()
            why = "connected, but the engine process did not answer (loading, or its supervisor is restarting it)"
            continue
        except (PeerGone, ProtocolViolation):
            chan.close()
            why = "the engine process closed the connection"
            time.sleep(0.05)
            continue
        if reply[0] != "ready" or len(reply) != 2 or not isinstance(reply[1], dict):
            chan.close()
            raise PPDeployError(f"the engine process at {address!r} answered '{label}' with {reply[0]!r}")
        return chan, reply[1]


class EngineProcessRunner(Runner):
    """A `Runner` whose engine runs in another process (see the module docstring). One call at a time per runner:
    a caller that wants calls in flight together opens several (each its own connection and arenas)."""

    backend = "engine-process"  # replaced per instance by the child's backend name

    def __init__(self, link: _OwnChild | _EngineAddress, *, shapes: ShapeProfile | None = None,
                 on_restart: Callable[[], None] | None = None):
        self._link = link
        self._label = link.label
        self.on_restart = on_restart
        # Called after each call with (this call's rows, rows of the engine call it was merged into): what a shared
        # engine really ran, beside what this caller sent (the server's ppdeploy_engine_* metrics).
        self.on_call: Callable[[int, int], None] | None = None
        self.restarts = 0  # engine processes replaced (a private child restarted, or a shared engine reconnected)
        self._lock = threading.Lock()
        self._closed = False
        self._conn: _EngineConnection | None = None
        chan, self.load_info = link.open()
        super().__init__(self.load_info["io"], shapes)
        self.backend = self.load_info["backend"]
        self._conn = _EngineConnection(chan, self._label)
        try:
            self._conn.reserve_inputs(self.io, self._shapes)
        except PeerGone:
            why = self._lose()
            raise EngineProcessDied(f"the engine process of '{self._label}' exited after loading ({why})") from None

    @property
    def pid(self) -> int | None:
        return self._link.pid

    @property
    def _sent(self) -> bool:
        """Whether the current call's request has reached the engine process (tests wait on it)."""
        conn = self._conn
        return conn is not None and conn.sent

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            self._link.close(conn.chan if conn else None)
            if conn is not None:
                conn.close()

    def __del__(self):  # a runner dropped without close(): don't leave its child running until the caller exits
        try:
            self.close()
        except Exception:
            pass

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise PPDeployError(f"the engine of '{self._label}' is closed")
            t0 = time.perf_counter()
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._reconnect()
                    out, child_timings = self._conn.call(feeds)
                    break
                except PeerGone:
                    pid, sent = self.pid, self._sent
                    why = self._lose()
                    if attempt == 1 and not sent:
                        continue  # it was seen dead before this call reached it: run the call on a fresh one
                    raise EngineProcessDied(
                        f"the engine process of '{self._label}' (pid {pid}) exited during this call ({why}); "
                        f"{self._link.restart_text}") from None
            total = (time.perf_counter() - t0) * 1e3
        timings = dict(child_timings)
        engine_ms = timings.pop("infer", 0.0)
        self.last_timings.update(timings)
        self.last_timings.update(engine=engine_ms,
                                 ipc=max(0.0, total - engine_ms - timings.get("engine_wait", 0.0)))
        merged = timings.get("merged_rows")
        if self.on_call is not None and merged:
            first = next(iter(feeds.values()))
            self.on_call(int(first.shape[0]) if first.ndim else 1, int(merged))
        return out

    def _reconnect(self) -> None:
        chan, info = self._link.open()
        self.load_info = info
        self._conn = _EngineConnection(chan, self._label)
        self.restarts += 1
        log.warning("engine process of %s replaced (pid %s, restart %d)", self._label, self.pid, self.restarts)
        if self.on_restart is not None:
            self.on_restart()
        self._conn.reserve_inputs(self.io, self._shapes)

    def _lose(self) -> str:
        """Forget the engine process (a private one is waited for, or killed) and every arena it had."""
        conn, self._conn = self._conn, None
        why = self._link.lost(conn.chan if conn else None)
        if conn is not None:
            conn.close()
        return why


class _EngineConnection:
    """The caller's end of one connection to an engine process: its arenas, and one call at a time."""

    def __init__(self, chan: Channel, label: str):
        self.chan = chan
        self.label = label
        self.sent = False  # whether the current call's request reached the engine process
        self._input: Arena | None = None
        self._outputs: list[Arena] = []
        self._next_id = 0

    def reserve_inputs(self, io: IOSpec, shapes: ShapeProfile | None) -> None:
        """Size the input arena from the shape profile's max shapes (memfd pages cost memory only once written)."""
        if not isinstance(shapes, ShapeProfile) or not shapes.ranges:
            return
        if any(t.name not in shapes.ranges for t in io.inputs):
            return
        need = sum(-(-nbytes(t.dtype, shapes.ranges[t.name].max) // ALIGN) * ALIGN for t in io.inputs)
        self._input = self._new_arena(need)

    def call(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        self.sent = False
        layout, need = plan(feeds.items())
        if self._input is None or self._input.size < need:
            if self._input is not None:
                self._drop(self._input)
            self._input = self._new_arena(grown(need))
        mm = self._input.mm
        for (name, dtype, shape, off), arr in zip(layout, feeds.values()):
            try:
                mm[off:off + arr.nbytes] = memoryview(arr).cast("B")  # memcpy without releasing the GIL
            except (TypeError, ValueError):  # a dtype the buffer protocol cannot describe (e.g. bfloat16)
                np.frombuffer(mm, np.uint8, arr.nbytes, off)[:] = arr.reshape(-1).view(np.uint8)
        offered = self._free_output_arena()
        self.chan.send(("infer", self._input.id, layout, offered.id if offered else -1))
        self.sent = True
        reply = self.chan.recv()
        if reply[0] == "error":
            raise rebuild_error(reply[1])
        _, out_layout, arena_id, timings, new = reply
        if new is not None:  # the offered arena was too small (or there was none): the child made one
            self._adopt(new, self.chan.take_fd())
            if offered is not None:
                self._drop(offered)
        return self._lease(arena_id, out_layout), timings

    def close(self) -> None:
        self.chan.close()
        arenas = ([self._input] if self._input else []) + self._outputs
        self._input, self._outputs = None, []
        for arena in arenas:
            close_map(arena.mm)

    def _free_output_arena(self) -> Arena | None:
        free = [a for a in self._outputs if not a.leased]
        for extra in sorted(free, key=lambda a: a.size)[:-_MAX_FREE_OUTPUT_ARENAS]:  # a burst's leftovers
            self._drop(extra)
        free = [a for a in self._outputs if not a.leased]
        return max(free, key=lambda a: a.size) if free else None

    def _lease(self, arena_id: int, layout: list) -> dict[str, np.ndarray]:
        arena = next(a for a in self._outputs if a.id == arena_id)
        end = max((off + nbytes(dtype, shape) for _, dtype, shape, off in layout), default=0)
        # Every output is a view of `holder` (numpy collapses a view's base onto the first array that does not own
        # its memory but sits on a non-array buffer), so the arena is free again once `holder` is collected.
        holder = np.frombuffer(arena.mm, np.uint8, end, 0)
        arena.leased = True
        weakref.finalize(holder, release, arena)
        return {name: holder[off:off + nbytes(dtype, shape)].view(np.dtype(dtype)).reshape(shape)
                for name, dtype, shape, off in layout}

    def _new_arena(self, size: int) -> Arena:
        fd, mm, size = make_arena(self.label, size)
        try:
            self._next_id += 1
            arena = Arena(self._next_id, size, mm)
            self.chan.send(("arena", arena.id, size), fds=[fd])
        except BaseException:
            close_map(mm)
            raise
        finally:
            os.close(fd)  # both mappings keep the memory; the last unmap frees it
        return arena

    def _adopt(self, new: tuple[int, int], fd: int) -> None:
        arena_id, size = new
        try:
            self._outputs.append(Arena(arena_id, size, mmap.mmap(fd, size)))
        finally:
            os.close(fd)

    def _drop(self, arena: Arena) -> None:
        if arena in self._outputs:
            self._outputs.remove(arena)
        if self._input is arena:
            self._input = None
        self.chan.send(("drop", arena.id))
        close_map(arena.mm)


__all__ = ["EngineProcessDeployment", "EngineProcessRunner", "connect_engine", "load_model_in_process"]
