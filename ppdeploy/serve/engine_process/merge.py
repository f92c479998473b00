"""The engine process's merge scheduler: one engine call at a time, merging queued calls of equal shapes.

An I/O thread reads every connection (one `selectors` loop: it never waits on the engine) and queues their
calls; the engine thread takes the oldest queued call plus every other queued call with the same non-batch
shapes and dtypes, up to `max_batch_size` rows (and the shape profile's largest batch), runs them as one call
(ppdeploy.serve.merge.run_merged: concatenated from the callers' arenas, split back, a failing call re-run
alone) and writes each caller's rows into that caller's output arena. Calls that don't fit wait for the next
engine call, oldest first, so none starves. With N HTTP workers each batcher sees 1/N of the traffic; merging here
gives the engine the large batches one process would have formed.
"""
from __future__ import annotations

import logging
import mmap
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.serve.engine_process.arena import close_map, grown, make_arena, plan
from ppdeploy.serve.engine_process.errors import encode_error
from ppdeploy.serve.engine_process.protocol import (
    PEER_TAGS,
    Channel,
    PeerGone,
    ProtocolViolation,
    check_arena,
    check_drop,
    check_hello,
    check_infer,
    peer_uid,
)
from ppdeploy.serve.merge import NotSplittable, run_merged

log = logging.getLogger("ppdeploy.serve.engine_process")

_CHILD_ARENA_IDS = 1 << 40  # arenas the child makes are numbered from here, apart from the caller's own


@dataclass(eq=False)
class Connection:
    """The engine process's end of one connection: the caller's arenas (and the ones made for it)."""

    chan: Channel
    label: str = "?"
    arenas: dict[int, mmap.mmap] = field(default_factory=dict)
    next_arena_id: int = _CHILD_ARENA_IDS
    busy: bool = False  # a call of it is in the engine now (its arenas must stay mapped)
    closed: bool = False

    def handle(self, msg: tuple) -> None:
        if msg[0] == "arena":
            arena_id, size = check_arena(msg)
            fd = self.chan.take_fd()
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size < size:  # a short file would SIGBUS on access
                    raise ProtocolViolation(f"arena {arena_id} is not a memory file of {size} bytes")
                old = self.arenas.pop(arena_id, None)
                if old is not None:
                    close_map(old)
                self.arenas[arena_id] = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        elif msg[0] == "drop":
            mm = self.arenas.pop(check_drop(msg), None)
            if mm is not None:
                close_map(mm)
        else:
            raise ProtocolViolation(f"unexpected message {msg[0]!r}")

    def release(self) -> None:
        self.chan.close()
        for mm in self.arenas.values():
            close_map(mm)
        self.arenas.clear()


@dataclass(eq=False)
class _Call:
    client: Connection
    in_id: int
    layout: list  # [(name, dtype, shape, offset)] in the client's input arena
    out_id: int  # the output arena the client offered (-1: none)
    rows: int
    key: tuple | None  # calls with equal keys can be concatenated along axis 0; None: never merged
    arrived: float  # perf_counter in the child


class Engine:
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
    def call_of(self, client: Connection, msg: tuple) -> _Call:
        in_id, layout, out_id = check_infer(msg)
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

    def disconnect(self, client: Connection) -> None:
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
    def serve_one(self, client: Connection, spin_s: float = 0.0) -> None:
        """A private child: its one caller's calls run as they are read (nothing to merge, no thread hand-off)."""
        while True:
            msg = client.chan.recv(spin_s=spin_s)
            if msg[0] == "infer":
                self.execute([self.call_of(client, msg)])
            elif msg[0] == "close":
                return
            else:
                client.handle(msg)

    def serve_listener(self, listener: socket.socket, control: Channel, info: dict) -> None:
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

    def _read_all(self, listener: socket.socket, control: Channel, info: dict) -> None:
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
                        if not self._trusted(sock):
                            continue
                        sel.register(sock, selectors.EVENT_READ, Connection(Channel(sock, tags=PEER_TAGS)))
                    elif key.data == "control":
                        alive = control.fill()
                        while alive and (msg := control.next_message()) is not None:
                            alive = msg[0] != "close"
                        if not alive:
                            return
                    else:
                        client: Connection = key.data
                        alive = client.chan.fill()
                        try:
                            while alive and (msg := client.chan.next_message()) is not None:
                                if msg[0] == "infer":
                                    calls.append(self.call_of(client, msg))
                                elif msg[0] == "hello":
                                    client.label = check_hello(msg)
                                    client.chan.send(("ready", info))
                                elif msg[0] == "close":
                                    alive = False
                                else:
                                    client.handle(msg)
                        except PeerGone:
                            alive = False
                        except ProtocolViolation as exc:  # ends that connection, never the engine
                            log.warning("engine process: dropping a connection of %s: %s", client.label, exc)
                            alive = False
                        except Exception:
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

    @staticmethod
    def _trusted(sock: socket.socket) -> bool:
        """Only a process of this uid may talk to the engine: anyone else is closed on before a byte is read."""
        try:
            uid = peer_uid(sock)
        except OSError as exc:
            uid, why = None, str(exc)
        else:
            why = f"uid {uid}"
        if uid == os.getuid():
            return True
        log.warning("engine process: refused a connection from %s (this engine runs as uid %d)", why, os.getuid())
        sock.close()
        return False

    # -- one engine call ----------------------------------------------------------------------------------------
    def execute(self, batch: list[_Call]) -> None:
        """Run `batch` as one engine call (each call alone if that fails) and answer every caller."""
        calls, views = [], []
        for c in batch:
            try:
                views.append(self._views(c))
                calls.append(c)
            except Exception as exc:  # an arena the caller never announced: a protocol error of that caller
                self._reply(c, ("error", encode_error(exc)))
        if not calls:
            return
        outcomes = run_merged(self.runner.infer, views, [c.rows for c in calls],
                              after=lambda: dict(self.runner.last_timings), on_not_splittable=self._not_mergeable)
        del views
        for c, outcome in zip(calls, outcomes):
            if outcome.error is not None:
                self._reply(c, ("error", encode_error(outcome.error)))
                continue
            run = outcome.run
            self._deliver(c, {k: np.ascontiguousarray(v) for k, v in outcome.outputs.items()},
                          dict(run.info, merged_rows=run.rows, merged_requests=len(run.members),
                               engine_wait=(run.started_ns / 1e9 - c.arrived) * 1e3))

    def _not_mergeable(self, exc: NotSplittable) -> None:
        log.warning("engine process: %s; running calls one at a time from now on", exc)
        self.max_rows = 1

    @staticmethod
    def _views(call: _Call) -> dict[str, np.ndarray]:
        """The call's inputs as views of the caller's input arena (the engine reads it directly)."""
        arena = call.client.arenas[call.in_id]
        return {name: np.frombuffer(arena, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)), off).reshape(shape)
                for name, dtype, shape, off in call.layout}

    def _deliver(self, call: _Call, part: dict[str, np.ndarray], timings: dict) -> None:
        """Write one caller's outputs into its offered arena (or a new one sent along) and reply."""
        client = call.client
        if client.closed:
            return
        try:
            layout, need = plan(part.items())
            out_id, dst, new, fds = call.out_id, client.arenas.get(call.out_id), None, []
            if dst is None or len(dst) < need:
                fd, dst, size = make_arena(client.label, grown(need))
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
        except PeerGone:
            pass  # the caller is gone; the I/O thread sees its EOF and forgets it
        except Exception as exc:
            self._reply(call, ("error", encode_error(exc)))

    @staticmethod
    def _reply(call: _Call, msg: tuple) -> None:
        if call.client.closed:
            return
        try:
            call.client.chan.send(msg)
        except PeerGone:
            pass


__all__ = ["Connection", "Engine"]
