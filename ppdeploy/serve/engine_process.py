"""A model instance's engine in its own process, so engine calls never wait on an HTTP process's GIL.

Two ways to get one, one protocol:

- `load_model_in_process(source, backend=..., **load_model_kwargs)` starts a private child process (a fresh
  interpreter: never a fork after paddle / openvino / CUDA are loaded) that runs `ppdeploy.deploy.load.load_model`
  exactly as the server would in-process (same backend chain, same engine cache), and talks to it over a
  socketpair. The caller owns the child: it restarts it when it dies.
- `SharedEngine.start(source, label=..., max_batch_size=..., ...)` starts one such child that listens on a unix
  socket (`.address`, an abstract name written "@ppdeploy-engine-<pid>-<n>" so it fits in argv and the
  environment); any number of HTTP worker processes `connect_engine(address, label=...)` to it. The child merges
  the calls that arrive from different connections while the engine is busy into one engine call. The supervisor
  owns the child: `ensure_running()` restarts a dead one at the same address (it keeps the listening socket, so
  callers that connect meanwhile wait in its backlog instead of being refused).

Both return an `EngineProcessDeployment` whose `.runner` is an `EngineProcessRunner`: a `Runner` with the child's
`io`, whose `infer` validates in the caller (the same `InputError`s, no round trip) and runs the engine in the child.

Data path. Tensors never go through the socket. Inputs and outputs live in shared-memory arenas: anonymous
`memfd_create` files mapped in both processes, whose descriptors travel as SCM_RIGHTS on the message that
announces them. An arena has no name in /dev/shm, so nothing can be left behind whichever process is killed, and
Docker's 64 MB /dev/shm limit does not apply (a batch of 32 PP-OCRv4 rec outputs is 67 MB). Each connection has its
own arenas. The caller copies a call's inputs into its input arena (sized from the model's shape profile, grown
when a larger batch comes) and offers its largest free output arena; the child writes the outputs there, or into a
new arena it makes and sends along with the reply when the offered one is too small (no extra round trip). The
caller hands the outputs out *without a copy*: the returned arrays are views of the arena, which stays leased
until the last of them is garbage-collected. Only small control messages (shapes, dtypes, offsets, timings,
errors) cross the socket.

Merging (shared engine). An I/O thread in the child reads every connection (one `selectors` loop: it never waits
on the engine, whose run releases the GIL inside ORT / OpenVINO) and queues their calls; the engine thread takes
the oldest queued call plus every other queued call with the same non-batch shapes and dtypes, up to
`max_batch_size` rows (and the shape profile's largest batch), concatenates them straight from the callers' arenas
(one copy), runs the engine once, and writes each caller's rows into that caller's output arena. Calls that don't
fit or differ in shape wait for the next engine call, oldest first, so none starves. A merged call that fails is
run again one call at a time, so one bad request cannot fail the others (the guarantee of
ppdeploy/serve/batcher.py); a model whose outputs don't carry the batch rows stops merging. Models without a batch
axis (or max_batch_size 0/1) never merge. Why merge here and not only in each worker's batcher: with N HTTP
workers each batcher sees 1/N of the traffic, so without this the engine would run N small batches where one
process ran one large one. Each reply says what really ran: `last_timings` gets `merged_rows` (rows of the engine
call), `merged_requests`, `engine_wait` (ms queued in the child behind earlier engine calls), `engine` (ms of the
engine call) and `ipc` (the rest of the round trip).

Why the caller's side is written the way it is: while the event loop thread keeps the GIL busy, a thread that
releases the GIL waits up to a switch interval (5 ms) to get it back, once per release (bench/gpu/README.md,
"The engine in its own process"). A call here releases the GIL exactly once, for the blocking read of the reply (the
same count as one `session.run` in-process); the request is written with libc's `write` called through
`ctypes.PyDLL`, which keeps the GIL (the message is a few hundred bytes on an otherwise idle socket), and inputs
are copied by `mmap` slice assignment, which keeps it too. A private child (one caller) runs each call as it is
read, with no thread hand-off.

Failure semantics. An exception raised in the child comes back as the same class with the same message (and
hint) when it can be rebuilt in the caller (every PPDeployError subclass, builtins), otherwise as a RuntimeError
naming the original type; the child's traceback is attached as a note. A child that dies during a call raises
`EngineProcessDied` (HTTP 503) for that call; the next call starts a fresh private child, or reconnects to the
shared engine (waiting up to `timeout_s` for its supervisor's restart; then `EngineProcessUnreachable`, also 503).
`restarts` counts them and `on_restart` is called (the server's `ppdeploy_engine_process_restarts_total`).
`close()` stops a private child and unmaps the arenas; a child whose supervisor dies reads EOF and exits, which
every connected caller sees as EOF.

Measured (run 10 on the H100, private children): an engine call here no longer slows down while another Python
thread is busy, but costs 0.5-1.2 ms more than in-process on that host, and the servers' peak throughput did not
rise (the Python work per request and per batch that shares the HTTP process's GIL is the limit: the reason for
several HTTP worker processes sharing one engine process); it cut the batched cls server's p99 at 500-1500 req/s
from 45-126 ms to 25-34 ms. Off by default. Run 12 (H200): shared by 6 HTTP workers (`ppdeploy serve --workers 6`), the
merged engine ran batches of ~62 and the server reached 0.91-0.92 of the raw runner's best on rec with the ctc_greedy
head, against 0.98-1.02 for six workers with their own engines; the fixed cost of a call is ~0.4 ms of Python in the
two processes (the socket round trip itself is 9 us).
"""
from __future__ import annotations

import array
import ctypes
import dataclasses
import itertools
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.backends.base import IOSpec, Runner
from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.serve.batcher import ServingError
from ppdeploy.core.shapes import ShapeProfile

log = logging.getLogger("ppdeploy.serve.engine_process")

ALIGN = 64  # every tensor starts on a cache line (and on any dtype's alignment)
_HEADER = struct.Struct("<I")  # frame length
_GROWTH = 1.25  # a grown arena gets this much headroom over the request that outgrew it
_MAX_FREE_OUTPUT_ARENAS = 2
_MAX_FDS = 16  # descriptors one read can carry (a message carries at most one)
_CHILD_ARENA_IDS = 1 << 40  # arenas the child makes are numbered from here, apart from the caller's own


class EngineProcessDied(ServingError):
    """The engine process exited while it ran a call (killed, out of memory, crashed in native code)."""

    status = 503  # the next call runs on a fresh engine process: worth retrying


class EngineProcessUnreachable(EngineProcessDied):
    """No engine process answered at a shared engine's address within the caller's timeout."""


@dataclass(frozen=True)
class LoadRequest:
    """What the child passes to `ppdeploy.deploy.load.load_model` (picklable: it crosses to the child)."""

    source: Any  # zoo name or path
    backend: Any  # str or list of backend names
    kwargs: dict[str, Any]
    label: str  # model name, for messages and the process title
    max_batch_size: int = 1  # rows one merged engine call may have (shared engine); 0/1: never merge


@dataclass
class _Arena:
    id: int
    size: int
    mm: mmap.mmap
    leased: bool = False


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
    _require_memfd()
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
    _require_memfd()
    runner = EngineProcessRunner(_EngineAddress(address, label, timeout_s), shapes=shapes)
    return _deployment(runner)


def _deployment(runner: EngineProcessRunner) -> EngineProcessDeployment:
    info = runner.load_info
    return EngineProcessDeployment(runner, info["backend"], list(info.get("attempts") or []), info.get("cache_hit"))


def _require_memfd() -> None:
    if not hasattr(os, "memfd_create"):
        raise ConfigError("engine_process needs Linux (memfd_create); run the engines in-process on this system")


# -- the supervisor of a shared engine ----------------------------------------------------------------------------
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
        self._control: _Channel | None = None
        self._closed = False
        self.restarts = 0
        self.backend = ""
        self.attempts: list[Any] = []
        self.cache_hit: bool | None = None
        self.io: IOSpec | None = None

    @classmethod
    def start(cls, source: Any, *, backend: Any = "auto", label: str, max_batch_size: int,
              **load_model_kwargs: Any) -> SharedEngine:
        _require_memfd()
        address = f"@ppdeploy-engine-{os.getpid()}-{next(cls._numbers)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(_sockaddr(address))
            listener.listen(socket.SOMAXCONN)
        except OSError as exc:
            listener.close()
            raise PPDeployError(f"cannot listen at {address!r} for the engine of '{label}': {exc}") from None
        request = LoadRequest(source, backend, dict(load_model_kwargs), label, int(max_batch_size or 0))
        engine = cls(request, listener, address)
        try:
            engine._spawn()
        except BaseException:
            listener.close()
            raise
        engine._request = dataclasses.replace(request, backend=[engine.backend])
        return engine

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        proc, control, info = _spawn_engine(self._request, self._listener)
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
            code = _reap(self._proc, self._control)
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
            _stop(self._proc, self._control)
            self._proc = self._control = None

    def __del__(self):  # dropped without close(): don't leave the child running until the supervisor exits
        try:
            self.close()
        except Exception:
            pass


# -- how a runner reaches its engine process ----------------------------------------------------------------------
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

    def open(self) -> tuple[_Channel, dict]:
        self._proc, chan, info = _spawn_engine(self.request)
        # Pin the backend the first child chose, so a restart loads the same engine from the cache.
        self.request = dataclasses.replace(self.request, backend=[info["backend"]])
        return chan, info

    def lost(self, chan: _Channel | None) -> str:
        code = _reap(self._proc, chan)
        self._proc = None
        return exit_text(code)

    def close(self, chan: _Channel | None) -> None:
        _stop(self._proc, chan)
        self._proc = None


class _EngineAddress:
    """`connect_engine`: the runner connects to a shared engine's address; its supervisor restarts the process."""

    restart_text = "the next call reconnects once its supervisor has restarted it"

    def __init__(self, address: str, label: str, timeout_s: float):
        self.address, self.label, self.timeout_s = address, label, float(timeout_s)
        self.pid: int | None = None

    def open(self) -> tuple[_Channel, dict]:
        chan, info = _connect(self.address, self.label, self.timeout_s)
        self.pid = info.get("pid")
        return chan, info

    def lost(self, chan: _Channel | None) -> str:
        if chan is not None:
            chan.close()
        self.pid = None
        return "exit status: see its supervisor's log"

    def close(self, chan: _Channel | None) -> None:
        self.lost(chan)


def _connect(address: str, label: str, timeout_s: float) -> tuple[_Channel, dict]:
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
            sock.connect(_sockaddr(address))
            sock.settimeout(None)
        except (OSError, ValueError) as exc:
            sock.close()
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            continue
        chan = _Channel(sock, hold_gil=True)
        try:
            chan.send(("hello", label))
            # A supervisor restarting its engine keeps the address: the hello waits in the backlog till it's up.
            reply = chan.recv(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            chan.close()
            why = "connected, but the engine process did not answer (loading, or its supervisor is restarting it)"
            continue
        except _PeerGone:
            chan.close()
            why = "the engine process closed the connection"
            time.sleep(0.05)
            continue
        if reply[0] != "ready":
            chan.close()
            raise PPDeployError(f"the engine process at {address!r} answered '{label}' with {reply[0]!r}")
        return chan, reply[1]


def _sockaddr(address: str) -> str:
    """'@name' is Linux's abstract socket 'name' (no file; written with '@' so it can travel in argv/env)."""
    return "\0" + address[1:] if address.startswith("@") else address


# -- the caller's side --------------------------------------------------------------------------------------------
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
        except _PeerGone:
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
                except _PeerGone:
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

    def __init__(self, chan: _Channel, label: str):
        self.chan = chan
        self.label = label
        self.sent = False  # whether the current call's request reached the engine process
        self._input: _Arena | None = None
        self._outputs: list[_Arena] = []
        self._next_id = 0

    def reserve_inputs(self, io: IOSpec, shapes: ShapeProfile | None) -> None:
        """Size the input arena from the shape profile's max shapes (memfd pages cost memory only once written)."""
        if not isinstance(shapes, ShapeProfile) or not shapes.ranges:
            return
        if any(t.name not in shapes.ranges for t in io.inputs):
            return
        need = sum(-(-_nbytes(t.dtype, shapes.ranges[t.name].max) // ALIGN) * ALIGN for t in io.inputs)
        self._input = self._new_arena(need)

    def call(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        self.sent = False
        layout, need = _plan(feeds.items())
        if self._input is None or self._input.size < need:
            if self._input is not None:
                self._drop(self._input)
            self._input = self._new_arena(_grown(need))
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
            raise _rebuild_error(reply[1])
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
            _close_map(arena.mm)

    def _free_output_arena(self) -> _Arena | None:
        free = [a for a in self._outputs if not a.leased]
        for extra in sorted(free, key=lambda a: a.size)[:-_MAX_FREE_OUTPUT_ARENAS]:  # a burst's leftovers
            self._drop(extra)
        free = [a for a in self._outputs if not a.leased]
        return max(free, key=lambda a: a.size) if free else None

    def _lease(self, arena_id: int, layout: list) -> dict[str, np.ndarray]:
        arena = next(a for a in self._outputs if a.id == arena_id)
        end = max((off + _nbytes(dtype, shape) for _, dtype, shape, off in layout), default=0)
        # Every output is a view of `holder` (numpy collapses a view's base onto the first array that does not own
        # its memory but sits on a non-array buffer), so the arena is free again once `holder` is collected.
        holder = np.frombuffer(arena.mm, np.uint8, end, 0)
        arena.leased = True
        weakref.finalize(holder, _release, arena)
        return {name: holder[off:off + _nbytes(dtype, shape)].view(np.dtype(dtype)).reshape(shape)
                for name, dtype, shape, off in layout}

    def _new_arena(self, size: int) -> _Arena:
        fd, mm, size = _make_arena(self.label, size)
        try:
            self._next_id += 1
            arena = _Arena(self._next_id, size, mm)
            self.chan.send(("arena", arena.id, size), fds=[fd])
        except BaseException:
            _close_map(mm)
            raise
        finally:
            os.close(fd)  # both mappings keep the memory; the last unmap frees it
        return arena

    def _adopt(self, new: tuple[int, int], fd: int) -> None:
        arena_id, size = new
        try:
            self._outputs.append(_Arena(arena_id, size, mmap.mmap(fd, size)))
        finally:
            os.close(fd)

    def _drop(self, arena: _Arena) -> None:
        if arena in self._outputs:
            self._outputs.remove(arena)
        if self._input is arena:
            self._input = None
        self.chan.send(("drop", arena.id))
        _close_map(arena.mm)


# -- framing ------------------------------------------------------------------------------------------------------
class _PeerGone(Exception):
    """The socket hit EOF or a broken pipe: the process at the other end is gone (or closed the connection)."""


class _Channel:
    """Length-prefixed pickled messages over a unix stream socket. A file descriptor (an arena) rides as SCM_RIGHTS
    on the message that announces it; the kernel hands it over no later than that message's first byte, so every
    read takes descriptors too (`recvmsg`) and they wait in `fds`, in order, until their message is read."""

    def __init__(self, sock: socket.socket, *, hold_gil: bool = False):
        self.sock = sock
        self.fd = sock.fileno()
        self.fds: deque[int] = deque()
        self._buf = bytearray()
        self._hold_gil = hold_gil  # the caller's side: write without giving up the GIL (module docstring)

    def send(self, message: tuple, fds: list[int] | tuple = ()) -> None:
        if self.fd < 0:
            raise _PeerGone()
        data = pickle.dumps(message, protocol=5)
        frame = _HEADER.pack(len(data)) + data
        try:
            if fds:
                sent = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                frame = frame[sent:]
            if frame and self._hold_gil:
                _write_holding_gil(self.fd, frame)
            elif frame:
                self.sock.sendall(frame)
        except OSError:
            raise _PeerGone() from None

    def fill(self) -> bool:
        """Read what has arrived (blocks if nothing has); False at EOF."""
        if self.fd < 0:
            return False
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(_MAX_FDS * 4))
        except OSError:
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise RuntimeError("engine process protocol: more descriptors arrived at once than expected")
        if not data:
            return False
        self._buf += data
        return True

    def next_message(self) -> tuple | None:
        """The next complete message already read, or None."""
        buf = self._buf
        if len(buf) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack_from(buf)
        end = _HEADER.size + n
        if len(buf) < end:
            return None
        message = pickle.loads(buf[_HEADER.size:end])
        del buf[:end]
        return message

    def recv(self, timeout: float | None = None, spin_s: float = 0.0) -> tuple:
        """The next message. `spin_s`: poll this long before sleeping in the read (the child's latency knob)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self.next_message()
            if message is not None:
                return message
            if spin_s > 0:
                until = time.perf_counter() + spin_s
                while not select.select([self.fd], [], [], 0)[0] and time.perf_counter() < until:
                    pass
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError()
            if not self.fill():  # the one place a call gives up the GIL: waiting for the engine
                raise _PeerGone()

    def take_fd(self) -> int:
        if not self.fds:
            raise RuntimeError("engine process protocol: an arena arrived without its file descriptor")
        return self.fds.popleft()

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()
        while self.fds:
            os.close(self.fds.popleft())


def child_env() -> dict[str, str]:
    """The environment of a fresh interpreter started from this one (engine process, --workers worker): ours, with
    this checkout's ppdeploy first on PYTHONPATH, so the child imports the same code even when it is not installed."""
    import ppdeploy

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ppdeploy.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _spawn_engine(request: LoadRequest, listener: socket.socket | None = None) -> tuple[Any, _Channel, dict]:
    """Start an engine process and have it load `request`; (process, control channel, what it loaded). With a
    `listener` the child serves every connection to it; without, it serves the control channel only."""
    import subprocess
    import sys

    # A fresh interpreter (fork + exec at once: nothing of paddle / openvino / CUDA is inherited), not
    # multiprocessing's spawn, which would re-run the caller's __main__ script in the child.
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
    chan = _Channel(parent, hold_gil=True)
    try:
        chan.send(("load", request))
        reply = chan.recv()
    except _PeerGone:
        code = _reap(proc, chan)
        raise EngineProcessDied(f"the engine process of '{request.label}' exited while loading "
                                f"({exit_text(code)})") from None
    if reply[0] == "error":
        _reap(proc, chan)
        raise _rebuild_error(reply[1])
    log.info("engine process of %s: pid %d, %s", request.label, proc.pid, reply[1]["backend"])
    return proc, chan, reply[1]


def _stop(proc, chan: _Channel | None) -> None:
    """Ask the child to close (it releases its engine), then reap it."""
    if chan is not None:
        try:
            chan.send(("close",))
        except _PeerGone:
            pass
    _reap(proc, chan, timeout=10.0)


def _reap(proc, chan: _Channel | None, timeout: float = 5.0) -> int | None:
    """Close the control channel (a child still reading sees EOF and exits) and wait for the child (or kill it)."""
    import subprocess

    if chan is not None:
        chan.close()
    if proc is None:
        return None
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _release(arena: _Arena) -> None:
    arena.leased = False


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # arrays still view it: the mapping goes when the last of them is collected
        pass


def _make_arena(label: str, size: int) -> tuple[int, mmap.mmap, int]:
    """A fresh memfd of at least `size` bytes, mapped here: (fd, mapping, size). The caller closes the fd."""
    size = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
    # The name shows in /proc only; the kernel takes at most 249 bytes of it (a label's characters may be several).
    name = f"ppdeploy-arena-{label}".encode()[:200].decode(errors="ignore")
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd, mm, size


def _nbytes(dtype: str, shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _grown(need: int) -> int:
    return int(need * _GROWTH)


def _plan(items) -> tuple[list, int]:
    """[(name, dtype, shape, offset)] for tensors laid out one after another, each ALIGN-aligned; total bytes."""
    layout, off = [], 0
    for name, arr in items:
        dtype = arr.dtype.str if arr.dtype.kind != "V" else arr.dtype.name  # bfloat16 is "V2" as a type string
        layout.append((name, dtype, tuple(arr.shape), off))
        off += -(-arr.nbytes // ALIGN) * ALIGN
    return layout, off


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


_libc_write = None


def _write_holding_gil(fd: int, data: bytes) -> None:
    """write(2) without releasing the GIL (ctypes.PyDLL keeps it). Falls back to os.write where ctypes can't."""
    global _libc_write
    if _libc_write is None:
        try:
            fn = ctypes.PyDLL(None, use_errno=True).write
            fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t), ctypes.c_ssize_t
            _libc_write = fn
        except (OSError, AttributeError):
            _libc_write = False
    view = memoryview(data)
    while view:
        if _libc_write:
            n = _libc_write(fd, bytes(view), len(view))
            if n < 0:
                err = ctypes.get_errno()
                if err == 4:  # EINTR
                    continue
                raise _PeerGone()
        else:
            try:
                n = os.write(fd, view)
            except OSError:
                raise _PeerGone() from None
        view = view[n:]


# -- errors across the process boundary ---------------------------------------------------------------------------
def _encode_error(exc: BaseException) -> dict:
    out = {"module": type(exc).__module__, "qualname": type(exc).__qualname__, "message": str(exc.args[0])
           if len(exc.args) == 1 else str(exc), "hint": getattr(exc, "hint", None),
           "traceback": "".join(traceback.format_exception(exc)), "pickled": None, "pid": os.getpid()}
    if isinstance(exc, PPDeployError) or type(exc).__module__ == "builtins":
        try:
            data = pickle.dumps(exc)
            pickle.loads(data)  # rebuildable (a subclass with its own __init__ signature may not be)
            out["pickled"] = data
        except Exception:
            pass
    return out


def _rebuild_error(info: dict) -> BaseException:
    exc: BaseException | None = None
    if info.get("pickled") is not None:
        try:
            exc = pickle.loads(info["pickled"])
        except Exception:
            exc = None
    if exc is None:
        cls = _importable_class(info["module"], info["qualname"])
        if cls is not None and issubclass(cls, PPDeployError):
            exc = cls.__new__(cls)
            Exception.__init__(exc, info["message"])
            exc.hint = info.get("hint")
        else:
            exc = RuntimeError(f"{info['module']}.{info['qualname']}: {info['message']}")
    exc.add_note(f"raised in the engine process (pid {info.get('pid')}):\n{info.get('traceback', '')}")
    return exc


def _importable_class(module: str, qualname: str):
    import importlib

    if not (module == "builtins" or module.startswith("ppdeploy.")):
        return None  # never import a third-party library (onnxruntime, paddle) into the HTTP process for an error
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None
    except Exception:
        return None


# -- the child ----------------------------------------------------------------------------------------------------
_CHILD_ENTRY = ("import sys; from ppdeploy.serve.engine_process import _child_main; "
                "_child_main(*map(int, sys.argv[1:]))")


def _child_main(control_fd: int, listen_fd: int = -1) -> None:
    # Ctrl-C and a SIGTERM to the process group are the server's to handle (it drains, then closes us); a child
    # whose parent is gone reads EOF and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = _Channel(socket.socket(fileno=control_fd))
    try:
        request: LoadRequest = control.recv()[1]
    except _PeerGone:
        return
    try:
        from ppdeploy.deploy.load import load_model

        dep = load_model(request.source, backend=request.backend, **request.kwargs)
    except BaseException as exc:
        try:
            control.send(("error", _encode_error(exc)))
        except _PeerGone:
            pass
        return
    runner = dep.runner
    info = {"io": runner.io, "backend": dep.backend, "attempts": list(dep.attempts), "cache_hit": dep.cache_hit,
            "pid": os.getpid(), "max_batch_size": request.max_batch_size}
    try:
        control.send(("ready", info))
        engine = _Engine(runner, request.max_batch_size, request.kwargs.get("shapes"))
        if listen_fd < 0:
            # PPDEPLOY_ENGINE_PROCESS_SPIN_US: poll this long for the next request before sleeping in the read,
            # trading a busy core for the wake-up latency of a sleeping process (an experiment knob for a private
            # child; 0, the default, never spins).
            spin_s = float(os.environ.get("PPDEPLOY_ENGINE_PROCESS_SPIN_US", "0")) / 1e6
            engine.serve_one(_Client(control, request.label), spin_s)
        else:
            engine.serve_listener(socket.socket(fileno=listen_fd), control, info)
    except _PeerGone:
        pass
    finally:
        try:
            dep.close()
        except Exception:
            pass
        control.close()


@dataclass(eq=False)
class _Client:
    """The engine process's end of one connection: the caller's arenas (and the ones made for it)."""

    chan: _Channel
    label: str = "?"
    arenas: dict[int, mmap.mmap] = field(default_factory=dict)
    next_arena_id: int = _CHILD_ARENA_IDS
    busy: bool = False  # a call of it is in the engine now (its arenas must stay mapped)
    closed: bool = False

    def handle(self, msg: tuple) -> None:
        if msg[0] == "arena":
            fd = self.chan.take_fd()
            try:
                self.arenas[msg[1]] = mmap.mmap(fd, msg[2])
            finally:
                os.close(fd)
        elif msg[0] == "drop":
            mm = self.arenas.pop(msg[1], None)
            if mm is not None:
                _close_map(mm)
        else:
            raise RuntimeError(f"engine process: unexpected message {msg[0]!r}")

    def release(self) -> None:
        self.chan.close()
        for mm in self.arenas.values():
            _close_map(mm)
        self.arenas.clear()


@dataclass(eq=False)
class _Call:
    client: _Client
    in_id: int
    layout: list  # [(name, dtype, shape, offset)] in the client's input arena
    out_id: int  # the output arena the client offered (-1: none)
    rows: int
    key: tuple | None  # calls with equal keys can be concatenated along axis 0; None: never merged
    arrived: float  # perf_counter in the child


class _NotMergeable(Exception):
    """The model's outputs do not carry the batch rows, so a merged call cannot be split back."""


class _Engine:
    """Runs the engine for every connection: one call at a time, merging queued calls of equal shapes."""

    def __init__(self, runner: Runner, max_batch_size: int, shapes: Any):
        self.runner = runner
        batch_axis = all(t.shape and t.shape[0] is None for t in runner.io.inputs)
        cap = int(max_batch_size or 0) if batch_axis else 0
        if cap > 1 and isinstance(shapes, ShapeProfile):  # a merged call must stay inside the built profile
            for t in runner.io.inputs:
                if t.name in shapes.ranges:
                    cap = min(cap, int(shapes.ranges[t.name].max[0]))
        self.max_rows = max(1, cap)
        self._pending: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._stopped = False

    # -- queue --------------------------------------------------------------------------------------------------
    def call_of(self, client: _Client, msg: tuple) -> _Call:
        _, in_id, layout, out_id = msg
        rows = {shape[0] if shape else None for _, _, shape, _ in layout}
        n = rows.pop() if len(rows) == 1 else None
        key = None
        if self.max_rows > 1 and n is not None:
            key = tuple((name, dtype, tuple(shape[1:])) for name, dtype, shape, _ in layout)
        return _Call(client, in_id, layout, out_id, n or 1, key, time.perf_counter())

    def submit(self, calls: list[_Call]) -> None:
        with self._cond:
            self._pending.extend(c for c in calls if not c.client.closed)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def disconnect(self, client: _Client) -> None:
        with self._cond:
            client.closed = True
            self._pending = deque(c for c in self._pending if c.client is not client)
            if client.busy:
                return  # the engine loop releases it once its call is done
        client.release()

    def _take(self) -> list[_Call]:
        """The oldest call, and every queued call that can join it (same key, within max_rows), oldest first."""
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        if first.key is not None and self.max_rows > 1 and rows < self.max_rows:
            rest: deque[_Call] = deque()
            for c in self._pending:
                if c.key == first.key and rows + c.rows <= self.max_rows:
                    batch.append(c)
                    rows += c.rows
                else:
                    rest.append(c)
            self._pending = rest
        return batch

    # -- serving ------------------------------------------------------------------------------------------------
    def serve_one(self, client: _Client, spin_s: float = 0.0) -> None:
        """A private child: its one caller's calls run as they are read (nothing to merge, no thread hand-off)."""
        while True:
            msg = client.chan.recv(spin_s=spin_s)
            if msg[0] == "infer":
                self.execute([self.call_of(client, msg)])
            elif msg[0] == "close":
                return
            else:
                client.handle(msg)

    def serve_listener(self, listener: socket.socket, control: _Channel, info: dict) -> None:
        """A shared engine: an I/O thread reads every connection and queues calls; this thread runs the engine.
        Returns when the supervisor sends 'close' or its end of `control` closes."""
        threading.Thread(target=self._read_all, args=(listener, control, info), name="engine-io",
                         daemon=True).start()
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                batch = self._take()
                for c in batch:
                    c.client.busy = True
            try:
                self.execute(batch)
            finally:
                gone = {}
                with self._cond:
                    for c in batch:
                        c.client.busy = False
                        if c.client.closed:
                            gone[id(c.client)] = c.client
                for client in gone.values():
                    client.release()

    def _read_all(self, listener: socket.socket, control: _Channel, info: dict) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(control.sock, selectors.EVENT_READ, "control")
        try:
            while True:
                calls: list[_Call] = []
                for key, _ in sel.select():
                    if key.data == "accept":
                        try:
                            sock, _ = listener.accept()
                        except OSError as exc:  # out of descriptors, say: the caller retries
                            log.warning("engine process: accept failed: %s", exc)
                            continue
                        sel.register(sock, selectors.EVENT_READ, _Client(_Channel(sock)))
                    elif key.data == "control":
                        alive = control.fill()
                        while alive and (msg := control.next_message()) is not None:
                            alive = msg[0] != "close"
                        if not alive:
                            return
                    else:
                        client: _Client = key.data
                        alive = client.chan.fill()
                        try:
                            while alive and (msg := client.chan.next_message()) is not None:
                                if msg[0] == "infer":
                                    calls.append(self.call_of(client, msg))
                                elif msg[0] == "hello":
                                    client.label = str(msg[1])
                                    client.chan.send(("ready", info))
                                elif msg[0] == "close":
                                    alive = False
                                else:
                                    client.handle(msg)
                        except _PeerGone:
                            alive = False
                        except Exception:  # a protocol error ends that connection, never the engine
                            log.exception("engine process: dropping a connection of %s", client.label)
                            alive = False
                        if not alive:
                            sel.unregister(key.fileobj)
                            self.disconnect(client)
                if calls:
                    self.submit(calls)
        except BaseException:
            log.exception("engine process: the I/O thread failed")
        finally:
            self.stop()

    # -- one engine call ----------------------------------------------------------------------------------------
    def execute(self, batch: list[_Call]) -> None:
        start = time.perf_counter()
        try:
            feeds = self._feeds(batch)
            outs = self.runner.infer(feeds)
            del feeds
            parts = self._split(outs, batch)
        except _NotMergeable as exc:
            log.warning("engine process: %s; running calls one at a time from now on", exc)
            self.max_rows = 1
            for c in batch:
                self.execute([c])
            return
        except BaseException as exc:
            if len(batch) > 1:  # one bad request must not fail the others: answer each from its own run
                del exc
                for c in batch:
                    self.execute([c])
                return
            self._reply(batch[0], ("error", _encode_error(exc)))
            return
        timings = dict(self.runner.last_timings)
        rows = sum(c.rows for c in batch)
        for c, part in zip(batch, parts):
            self._deliver(c, part, dict(timings, merged_rows=rows, merged_requests=len(batch),
                                        engine_wait=(start - c.arrived) * 1e3))

    @staticmethod
    def _feeds(batch: list[_Call]) -> dict[str, np.ndarray]:
        views = []
        for c in batch:
            arena = c.client.arenas[c.in_id]
            views.append({name: np.frombuffer(arena, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)),
                                              off).reshape(shape) for name, dtype, shape, off in c.layout})
        if len(views) == 1:
            return views[0]  # the engine reads the caller's arena directly
        return {name: np.concatenate([v[name] for v in views], axis=0) for name in views[0]}

    @staticmethod
    def _split(outs: dict[str, np.ndarray], batch: list[_Call]) -> list[dict[str, np.ndarray]]:
        outs = {k: np.ascontiguousarray(v) for k, v in outs.items()}
        if len(batch) == 1:
            return [outs]
        total = sum(c.rows for c in batch)
        for name, arr in outs.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                raise _NotMergeable(f"output '{name}' has shape {arr.shape}, not the {total} rows of a merged call")
        parts, start = [], 0
        for c in batch:
            parts.append({k: v[start:start + c.rows] for k, v in outs.items()})
            start += c.rows
        return parts

    def _deliver(self, call: _Call, part: dict[str, np.ndarray], timings: dict) -> None:
        """Write one caller's outputs into its offered arena (or a new one sent along) and reply."""
        client = call.client
        if client.closed:
            return
        try:
            layout, need = _plan(part.items())
            out_id, dst, new, fds = call.out_id, client.arenas.get(call.out_id), None, []
            if dst is None or len(dst) < need:
                fd, dst, size = _make_arena(client.label, _grown(need))
                client.next_arena_id += 1
                out_id = client.next_arena_id
                client.arenas[out_id] = dst
                new, fds = (out_id, size), [fd]
            try:
                for (_, _, _, off), arr in zip(layout, part.values()):
                    np.frombuffer(dst, np.uint8, arr.nbytes, off)[:] = arr.reshape(-1).view(np.uint8)
                client.chan.send(("ok", layout, out_id, timings, new), fds)
            finally:
                for fd in fds:
                    os.close(fd)
        except _PeerGone:
            pass  # the caller is gone; the I/O thread sees its EOF and forgets it
        except Exception as exc:
            self._reply(call, ("error", _encode_error(exc)))

    @staticmethod
    def _reply(call: _Call, msg: tuple) -> None:
        if call.client.closed:
            return
        try:
            call.client.chan.send(msg)
        except _PeerGone:
            pass


__all__ = ["EngineProcessDeployment", "EngineProcessDied", "EngineProcessRunner", "EngineProcessUnreachable",
           "LoadRequest", "SharedEngine", "child_env", "connect_engine", "exit_text", "load_model_in_process"]
