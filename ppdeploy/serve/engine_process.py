"""A model instance's engine in its own process, so engine calls never wait on the HTTP process's GIL.

`load_model_in_process(source, backend=..., **load_model_kwargs)` starts a child process (a fresh interpreter:
never a fork after paddle / openvino / CUDA are loaded) that runs `ppdeploy.deploy.load_model` exactly as
the server would in-process (same backend chain, same engine cache), and returns an `EngineProcessDeployment`
whose `.runner` is an `EngineProcessRunner`: a `Runner` with the child's `io`, whose `infer` validates in the
parent (the same `InputError`s, no round trip) and runs the engine in the child.

Data path. Tensors never go through the pipe. Inputs and outputs live in shared-memory arenas: anonymous
`memfd_create` files mapped in both processes, handed to the child over the control socket (SCM_RIGHTS) when they
are made or grown. An arena has no name in /dev/shm, so nothing can be left behind whichever process is killed,
and Docker's 64 MB /dev/shm limit does not apply (a batch of 32 PP-OCRv4 rec outputs is 67 MB). The parent copies
a call's inputs into the input arena (sized from the model's shape profile, grown when a larger batch comes); the
child copies the engine's outputs into a free output arena and the parent hands them out *without a copy*: the
returned arrays are views of the arena, which stays leased until the last of them is garbage-collected. Only small
control messages (shapes, dtypes, offsets, timings, errors) cross the socket.

Why the parent side is written the way it is: while the event loop thread keeps the GIL busy, a thread that
releases the GIL waits up to a switch interval (5 ms) to get it back, once per release (bench/gpu/README.md,
"The engine in its own process"). A call here releases the GIL exactly once, for the blocking read of the reply (the same
count as one `session.run` in-process); the request is written with libc's `write` called through
`ctypes.PyDLL`, which keeps the GIL (the message is a few hundred bytes on an otherwise idle socket), and inputs
are copied by `mmap` slice assignment, which keeps it too.

Failure semantics. An exception raised in the child comes back as the same class with the same message (and
hint) when it can be rebuilt in the parent (every PPDeployError subclass, builtins), otherwise as a RuntimeError
naming the original type; the child's traceback is attached as a note. A child that dies during a call raises
`EngineProcessDied` (HTTP 503) for that call; the next call starts a fresh child (`restarts` counts them and
`on_restart` is called, the server's `ppdeploy_engine_process_restarts_total`). `close()` stops the child and
unmaps the arenas; a child whose parent dies reads EOF and exits.

Measured (run 10 on the H100): an engine call here no longer slows down while another Python thread is busy, but
costs 0.5-1.2 ms more than in-process on that host, and the servers' peak throughput did not rise (the Python work
per request and per batch that shares the HTTP process's GIL is the limit); it cut the batched cls server's p99 at
500-1500 req/s from 45-126 ms to 25-34 ms. Off by default.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import signal
import struct
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ppdeploy.backends.base import IOSpec, Runner
from ppdeploy.errors import ConfigError, PPDeployError
from ppdeploy.serve.batcher import ServingError
from ppdeploy.shapes import ShapeProfile

log = logging.getLogger("ppdeploy.serve.engine_process")

ALIGN = 64  # every tensor starts on a cache line (and on any dtype's alignment)
_HEADER = struct.Struct("<I")  # frame length
_GROWTH = 1.25  # a grown arena gets this much headroom over the request that outgrew it
_MAX_FREE_OUTPUT_ARENAS = 2


class EngineProcessDied(ServingError):
    """The engine process exited while it ran a call (killed, out of memory, crashed in native code)."""

    status = 503  # the next call runs on a fresh engine process: worth retrying


@dataclass(frozen=True)
class LoadRequest:
    """What the child passes to `ppdeploy.deploy.load_model` (picklable: it crosses the spawn)."""

    source: Any  # zoo name or path
    backend: Any  # str or list of backend names
    kwargs: dict[str, Any]
    label: str  # model name, for messages and the process title


@dataclass
class _Arena:
    id: int
    size: int
    mm: mmap.mmap
    leased: bool = False


@dataclass
class EngineProcessDeployment:
    """The part of `ppdeploy.deploy.Deployment` the server uses, for an engine that runs in a child process."""

    runner: "EngineProcessRunner"
    backend: str
    attempts: list[Any] = field(default_factory=list)
    cache_hit: bool | None = None

    def close(self) -> None:
        self.runner.close()


def load_model_in_process(source: Any, *, backend: Any = "auto", label: str | None = None,
                          on_restart: Callable[[], None] | None = None, **kwargs: Any) -> EngineProcessDeployment:
    """`ppdeploy.deploy.load_model(source, backend=..., **kwargs)`, run in a child process. Restarts reuse the backend
    the first start settled on (no silent switch to another backend of the chain)."""
    if not hasattr(os, "memfd_create"):
        raise ConfigError("engine_process needs Linux (memfd_create); run the engines in-process on this system")
    request = LoadRequest(source, backend, dict(kwargs), label or str(source))
    runner = EngineProcessRunner(request, on_restart=on_restart)
    info = runner.load_info
    return EngineProcessDeployment(runner, info["backend"], list(info.get("attempts") or []), info.get("cache_hit"))


class EngineProcessRunner(Runner):
    backend = "engine-process"  # replaced per instance by the child's backend name

    def __init__(self, request: LoadRequest, *, on_restart: Callable[[], None] | None = None):
        self._request = request
        self.on_restart = on_restart
        self.restarts = 0
        self._lock = threading.Lock()
        self._proc = None
        self._sock = None
        self._fd = -1
        self._rbuf = b""
        self._next_id = 0
        self._input: _Arena | None = None
        self._outputs: list[_Arena] = []
        self._closed = False
        self._sent = False  # whether the current call's request reached the child
        self.load_info = self._start()
        shapes = request.kwargs.get("shapes")
        super().__init__(self.load_info["io"], shapes if isinstance(shapes, ShapeProfile) else None)
        # Pin the backend the first child chose, so a restart loads the same engine from the cache.
        self._request = LoadRequest(request.source, [self.load_info["backend"]], request.kwargs, request.label)
        self.backend = self.load_info["backend"]
        try:
            self._reserve_input_arena()
        except _ChildGone:
            code = self._reap()
            raise EngineProcessDied(f"the engine process of '{request.label}' exited after loading "
                                    f"({_exit_text(code)})") from None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> dict:
        import socket
        import subprocess
        import sys

        import ppdeploy

        # A fresh interpreter (fork + exec at once: nothing of paddle / openvino / CUDA is inherited), not
        # multiprocessing's spawn, which would re-run the caller's __main__ script in the child.
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # arenas' fds travel over it
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(ppdeploy.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD_ENTRY, str(child.fileno())],
                                    pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            raise PPDeployError(f"cannot start the engine process of '{self._request.label}': {exc}") from None
        finally:
            child.close()  # only the child holds its end now: its death reads as EOF here
        self._proc, self._sock, self._fd, self._rbuf = proc, parent, parent.fileno(), b""
        try:
            self._send(("load", self._request))
            reply = self._recv()
        except _ChildGone:
            code = self._reap()
            raise EngineProcessDied(f"the engine process of '{self._request.label}' exited while loading "
                                    f"({_exit_text(code)})") from None
        if reply[0] == "error":
            self._reap()
            raise _rebuild_error(reply[1])
        log.info("engine process of %s: pid %d, %s", self._request.label, proc.pid, reply[1]["backend"])
        return reply[1]

    def _reap(self, timeout: float = 5.0) -> int | None:
        """Forget the current child (waited for, or killed) and every arena it had; returns its exit code."""
        import subprocess

        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        self._fd = -1
        if sock is not None:
            sock.close()  # a child still reading sees EOF and exits
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        arenas = ([self._input] if self._input else []) + self._outputs
        self._input, self._outputs = None, []
        for arena in arenas:
            _unmap(arena)
        return code

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc is not None:
                try:
                    self._send(("close",))
                except _ChildGone:
                    pass
                self._reap(timeout=10.0)

    def __del__(self):  # a runner dropped without close(): don't leave its child running until the parent exits
        try:
            self.close()
        except Exception:
            pass

    # -- inference ----------------------------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise PPDeployError(f"the engine of '{self._request.label}' is closed")
            t0 = time.perf_counter()
            for attempt in (1, 2):
                self._sent = False
                try:
                    if self._proc is None:
                        self._restart()
                    reply = self._call(feeds)
                    break
                except _ChildGone:
                    pid = self.pid
                    code = self._reap()
                    if attempt == 1 and not self._sent:
                        continue  # it was seen dead before this call reached it: run the call on a fresh one
                    raise EngineProcessDied(
                        f"the engine process of '{self._request.label}' (pid {pid}) exited during this call "
                        f"({_exit_text(code)}); the next call starts a new one") from None
            if reply[0] == "error":
                raise _rebuild_error(reply[1])
            _, layout, arena_id, child_timings = reply
            out = self._lease(arena_id, layout)
            total = (time.perf_counter() - t0) * 1e3
        timings = dict(child_timings)
        engine_ms = timings.pop("infer", 0.0)
        self.last_timings.update(timings)
        self.last_timings.update(engine=engine_ms, ipc=max(0.0, total - engine_ms))
        return out

    def _restart(self) -> None:
        self.load_info = self._start()
        self.restarts += 1
        self._reserve_input_arena()
        log.warning("engine process of %s restarted (pid %d, restart %d)", self._request.label, self.pid, self.restarts)
        if self.on_restart is not None:
            self.on_restart()

    def _call(self, feeds: dict[str, np.ndarray]) -> tuple:
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
        out = self._free_output_arena()
        self._send(("infer", self._input.id, layout, out.id if out else -1))
        self._sent = True
        while True:
            reply = self._recv()
            if reply[0] != "grow":
                return reply
            if out is not None:
                self._drop(out)
            out = self._new_arena(_grown(reply[1]), output=True)
            self._send(("use", out.id))

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

    # -- arenas -------------------------------------------------------------------------------------------------
    def _reserve_input_arena(self) -> None:
        """Size the input arena from the shape profile's max shapes (memfd pages cost memory only once written)."""
        shapes = self._request.kwargs.get("shapes")
        if not isinstance(shapes, ShapeProfile) or not shapes.ranges:
            return
        specs = self.io.inputs
        if any(t.name not in shapes.ranges for t in specs):
            return
        need = sum(-(-_nbytes(t.dtype, shapes.ranges[t.name].max) // ALIGN) * ALIGN for t in specs)
        self._input = self._new_arena(need)

    def _new_arena(self, size: int, output: bool = False) -> _Arena:
        size = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        fd = os.memfd_create(f"ppdeploy-arena-{self._request.label}"[:200], os.MFD_CLOEXEC)  # name: /proc only
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            self._next_id += 1
            arena = _Arena(self._next_id, size, mm)
            self._send(("arena", arena.id, size))
            import socket

            try:
                socket.send_fds(self._sock, [b"F"], [fd])
            except OSError:
                raise _ChildGone() from None
        finally:
            os.close(fd)  # both mappings keep the memory; the last unmap frees it
        if output:
            self._outputs.append(arena)
        return arena

    def _drop(self, arena: _Arena) -> None:
        if arena in self._outputs:
            self._outputs.remove(arena)
        if self._input is arena:
            self._input = None
        self._send(("drop", arena.id))
        _unmap(arena)

    # -- framing ------------------------------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        if self._fd < 0:
            raise _ChildGone()
        data = pickle.dumps(message, protocol=5)
        _write_holding_gil(self._fd, _HEADER.pack(len(data)) + data)

    def _recv(self) -> tuple:
        buf = self._rbuf
        while True:
            if len(buf) >= _HEADER.size:
                (n,) = _HEADER.unpack_from(buf)
                if len(buf) >= _HEADER.size + n:
                    self._rbuf = buf[_HEADER.size + n:]
                    return pickle.loads(buf[_HEADER.size:_HEADER.size + n])
            try:
                chunk = os.read(self._fd, 1 << 16)  # the one place a call gives up the GIL: waiting for the child
            except OSError:
                chunk = b""
            if not chunk:
                raise _ChildGone()
            buf += chunk


class _ChildGone(Exception):
    """The control socket hit EOF or a broken pipe: the child is gone."""


def _release(arena: _Arena) -> None:
    arena.leased = False


def _unmap(arena: _Arena) -> None:
    _close_map(arena.mm)


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # arrays still view it: the mapping goes when the last of them is collected
        pass


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


def _exit_text(code: int | None) -> str:
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
                raise _ChildGone()
        else:
            try:
                n = os.write(fd, view)
            except OSError:
                raise _ChildGone() from None
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
_CHILD_ENTRY = "import sys; from ppdeploy.serve.engine_process import _child_main; _child_main(int(sys.argv[1]))"


def _child_main(fd: int) -> None:
    import socket

    # Ctrl-C and a SIGTERM to the process group are the server's to handle (it drains, then closes us); a child
    # whose parent is gone reads EOF and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = socket.socket(fileno=fd)

    def send(message: tuple) -> None:
        data = pickle.dumps(message, protocol=5)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(fd, view):]

    # PPDEPLOY_ENGINE_PROCESS_SPIN_US: poll this long for the next request before sleeping in read(2), trading a
    # busy core for the wake-up latency of a sleeping process (an experiment knob; 0, the default, never spins).
    spin_s = float(os.environ.get("PPDEPLOY_ENGINE_PROCESS_SPIN_US", "0")) / 1e6

    def recv() -> tuple:
        if spin_s > 0:
            import select

            deadline = time.perf_counter() + spin_s
            while not select.select([fd], [], [], 0)[0] and time.perf_counter() < deadline:
                pass
        (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
        return pickle.loads(_read_exact(fd, n))  # exact reads: an arena's SCM_RIGHTS byte must stay unread

    try:
        request: LoadRequest = recv()[1]
    except EOFError:
        return
    try:
        from ppdeploy.deploy import load_model

        dep = load_model(request.source, backend=request.backend, **request.kwargs)
    except BaseException as exc:
        send(("error", _encode_error(exc)))
        return
    runner = dep.runner
    send(("ready", {"io": runner.io, "backend": dep.backend, "attempts": list(dep.attempts),
                    "cache_hit": dep.cache_hit, "pid": os.getpid()}))
    arenas: dict[int, mmap.mmap] = {}
    try:
        while True:
            try:
                msg = recv()
            except EOFError:
                return
            kind = msg[0]
            if kind == "infer":
                _, in_id, layout, out_id = msg
                src = arenas[in_id]
                feeds = {name: np.frombuffer(src, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)), off).reshape(shape)
                         for name, dtype, shape, off in layout}
                try:
                    outs = runner.infer(feeds)
                except BaseException as exc:
                    send(("error", _encode_error(exc)))
                    del exc
                    feeds = None
                    continue
                outs = {k: np.ascontiguousarray(v) for k, v in outs.items()}
                out_layout, need = _plan(outs.items())
                if out_id not in arenas or len(arenas[out_id]) < need:
                    send(("grow", need))
                    while True:  # the parent sends the new arena ("arena" + fd), maybe drops the old, then "use"
                        msg = recv()
                        if msg[0] == "use":
                            out_id = msg[1]
                            break
                        _child_arena_message(msg, conn, arenas)
                dst = arenas[out_id]
                for (name, dtype, shape, off), arr in zip(out_layout, outs.values()):
                    np.frombuffer(dst, np.uint8, arr.nbytes, off)[:] = arr.reshape(-1).view(np.uint8)
                del outs, feeds
                send(("ok", out_layout, out_id, dict(runner.last_timings)))
            elif kind == "close":
                return
            else:
                _child_arena_message(msg, conn, arenas)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return
    finally:
        try:
            dep.close()
        except Exception:
            pass
        conn.close()


def _child_arena_message(msg: tuple, conn, arenas: dict[int, mmap.mmap]) -> None:
    if msg[0] == "arena":
        import socket

        _, fds, _, _ = socket.recv_fds(conn, 1, 1)
        if len(fds) != 1:
            raise RuntimeError("engine process: an arena arrived without its file descriptor")
        fd = fds[0]
        try:
            arenas[msg[1]] = mmap.mmap(fd, msg[2])
        finally:
            os.close(fd)
    elif msg[0] == "drop":
        mm = arenas.pop(msg[1], None)
        if mm is not None:
            _close_map(mm)
    else:
        raise RuntimeError(f"engine process: unexpected message {msg[0]!r}")


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


__all__ = ["EngineProcessDeployment", "EngineProcessDied", "EngineProcessRunner", "LoadRequest",
           "load_model_in_process"]
