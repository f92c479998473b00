"""The engine process's wire protocol: framed JSON control messages over a unix stream socket; tensors never
cross it (they live in memfd arenas whose descriptors ride as SCM_RIGHTS). Nothing read from a socket is
unpickled, so a peer can at worst send a message that is refused.

A frame is MAGIC (4 bytes), the header's length (u32, little-endian) and a UTF-8 JSON object
`{"k": kind, "a": [args...]}`, at most MAX_HEADER bytes. Kinds: "load", "hello", "ready", "arena", "drop",
"infer", "ok", "error", "close". Args are JSON values; a few types travel tagged (`{"$tuple": [...]}`,
`{"$path": str}`, `{"$shapes": profile}`, `{"$io": spec}`, `{"$attempt": dict}`, `{"$load": request}`), and a
channel decodes only the tags it allows (the listening socket's channels: tuples only). An arena's descriptor
rides on the message that announces it. `check_*` validate each message before it is used. The caller writes
without giving up the GIL (`write_holding_gil`): a thread that releases the GIL while the event loop keeps it
busy waits up to a switch interval to get it back, so a call releases it only once, to read the reply.
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec, TensorSpec
from ppdeploy.deploy.select import Attempt

MAGIC = b"PPE1"
_HEADER = struct.Struct("<4sI")  # magic, JSON header length
MAX_HEADER = 4 << 20  # a 'ready' with a large IOSpec is a few KB; anything near this is not ours
_MAX_FDS = 16  # descriptors one read can carry (a message carries at most one)
_MAX_DEPTH = 32  # nesting of a decoded message (load kwargs are the deepest: a few levels)

ALL_TAGS = frozenset({"$tuple", "$path", "$shapes", "$io", "$attempt", "$load"})
PEER_TAGS = frozenset({"$tuple"})  # what a connection to the listening socket may send


@dataclass(frozen=True)
class LoadRequest:
    """What the child passes to `ppdeploy.deploy.load.load_model` (it crosses to the child as tagged JSON)."""

    source: Any  # zoo name or path
    backend: Any  # str or list of backend names
    kwargs: dict[str, Any]
    label: str  # model name, for messages and the process title
    max_batch_size: int = 1  # rows one merged engine call may have (shared engine); 0/1: never merge


class PeerGone(Exception):
    """The socket hit EOF or a broken pipe: the process at the other end is gone (or closed the connection)."""


class ProtocolViolation(Exception):
    """A frame or message that is not the engine protocol: the connection that sent it is closed."""


# -- encoding ---------------------------------------------------------------------------------------------------
def _enc(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [_enc(v) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("engine process protocol: dict keys must be strings")
        out = {k: _enc(v) for k, v in value.items()}
        return {"$dict": out} if any(k.startswith("$") for k in value) else out
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, ShapeProfile):
        return {"$shapes": value.to_dict()}
    if isinstance(value, IOSpec):
        return {"$io": {side: [[t.name, t.dtype, list(t.shape)] for t in getattr(value, side)]
                        for side in ("inputs", "outputs")}}
    if isinstance(value, Attempt):
        return {"$attempt": value.to_dict()}
    if isinstance(value, LoadRequest):
        return {"$load": {"source": _enc(value.source), "backend": _enc(value.backend), "kwargs": _enc(value.kwargs),
                          "label": value.label, "max_batch_size": int(value.max_batch_size)}}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _enc(value.item())  # a numpy scalar in a config value
    raise TypeError(f"engine process protocol: cannot send a {type(value).__name__} to the engine process "
                    "(only JSON values, paths, tuples and shape profiles cross it)")


def _dec(value: Any, tags: frozenset, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ProtocolViolation("message nested too deeply")
    if isinstance(value, list):
        return [_dec(v, tags, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag.startswith("$"):
            if tag == "$dict":
                if not isinstance(inner, dict):
                    raise ProtocolViolation("$dict needs an object")
                return {k: _dec(v, tags, depth + 1) for k, v in inner.items()}
            if tag not in tags:
                raise ProtocolViolation(f"tag {tag!r} is not accepted on this channel")
            return _tagged(tag, inner, tags, depth)
    return {k: _dec(v, tags, depth + 1) for k, v in value.items()}


def _tagged(tag: str, inner: Any, tags: frozenset, depth: int) -> Any:
    try:
        if tag == "$tuple":
            return tuple(_dec(v, tags, depth + 1) for v in _typed(inner, list))
        if tag == "$path":
            return Path(_typed(inner, str))
        if tag == "$shapes":
            return ShapeProfile.from_dict(_typed(inner, dict))
        if tag == "$io":
            inner = _typed(inner, dict)
            return IOSpec(*(tuple(TensorSpec(_typed(n, str), _typed(d, str), tuple(_dim(x) for x in _typed(s, list)))
                                  for n, d, s in _typed(inner[side], list)) for side in ("inputs", "outputs")))
        if tag == "$attempt":
            inner = _typed(inner, dict)
            return Attempt(str(inner["backend"]), str(inner["status"]), str(inner.get("reason", "")),
                           float(inner.get("seconds", 0.0)))
        if tag == "$load":
            inner = _typed(inner, dict)
            kwargs = _dec(inner["kwargs"], tags, depth + 1)
            return LoadRequest(_dec(inner["source"], tags, depth + 1), _dec(inner["backend"], tags, depth + 1),
                               _typed(kwargs, dict), _typed(inner["label"], str), _int(inner["max_batch_size"]))
    except ProtocolViolation:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolViolation(f"malformed {tag}: {exc}") from None
    raise ProtocolViolation(f"unknown tag {tag!r}")


def _typed(value: Any, kind: type | tuple) -> Any:
    if not isinstance(value, kind):
        raise ProtocolViolation(f"expected {getattr(kind, '__name__', 'a list')}, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolViolation(f"expected an integer, got {type(value).__name__}")
    return value


def _dim(value: Any) -> int | None:
    return None if value is None else _int(value)


def encode(message: tuple) -> bytes:
    """One frame of `message` (kind, *args)."""
    body = json.dumps({"k": message[0], "a": [_enc(v) for v in message[1:]]}, separators=(",", ":"),
                      allow_nan=True).encode()
    if len(body) > MAX_HEADER:
        raise ValueError(f"engine process protocol: a {message[0]!r} message of {len(body)} bytes is too large")
    return _HEADER.pack(MAGIC, len(body)) + body


def decode(body: bytes | bytearray | memoryview, tags: frozenset = ALL_TAGS) -> tuple:
    try:
        obj = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise ProtocolViolation("a frame is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("k"), str) or not isinstance(obj.get("a"), list):
        raise ProtocolViolation("a frame is not an engine-protocol message")
    return (obj["k"], *(_dec(v, tags) for v in obj["a"]))


# -- message checks (the child's side: whatever a peer sends is checked before it is used) ----------------------
def check_arena(msg: tuple) -> tuple[int, int]:
    if len(msg) != 3:
        raise ProtocolViolation("'arena' takes (id, size)")
    arena_id, size = _int(msg[1]), _int(msg[2])
    if arena_id < 0 or size <= 0:
        raise ProtocolViolation("'arena' needs a non-negative id and a positive size")
    return arena_id, size


def check_drop(msg: tuple) -> int:
    if len(msg) != 2:
        raise ProtocolViolation("'drop' takes (id)")
    return _int(msg[1])


def check_infer(msg: tuple) -> tuple[int, list, int]:
    """(input arena id, [(name, dtype, shape, offset)], offered output arena id) of an 'infer' message."""
    if len(msg) != 4:
        raise ProtocolViolation("'infer' takes (input arena, layout, output arena)")
    in_id, layout, out_id = _int(msg[1]), _typed(msg[2], list), _int(msg[3])
    out = []
    for item in layout:
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise ProtocolViolation("a layout entry is (name, dtype, shape, offset)")
        name, dtype, shape, off = item
        _typed(name, str)
        if dtype not in TENSOR_DTYPES:
            raise ProtocolViolation(f"dtype {dtype!r} is not a tensor dtype")
        shape = tuple(_int(d) for d in _typed(shape, (list, tuple)))
        if any(d < 0 for d in shape) or _int(off) < 0:
            raise ProtocolViolation("negative shape or offset")
        out.append((name, dtype, shape, off))
    return in_id, out, out_id


def check_hello(msg: tuple) -> str:
    if len(msg) != 2:
        raise ProtocolViolation("'hello' takes (label)")
    return _typed(msg[1], str)[:256]


# numpy type strings of the tensors an arena may hold (never object: those cannot live in shared memory)
TENSOR_DTYPES = frozenset(
    [f"{order}{kind}{size}" for order in "<>|" for kind, sizes in (("f", (2, 4, 8)), ("i", (1, 2, 4, 8)),
                                                                     ("u", (1, 2, 4, 8)), ("c", (8, 16)))
     for size in sizes] + ["|b1", "bfloat16"])


class Channel:
    """Framed JSON messages over a unix stream socket. A file descriptor (an arena) rides as SCM_RIGHTS on the
    message that announces it; the kernel hands it over no later than that message's first byte, so every read
    takes descriptors too (`recvmsg`) and they wait in `fds`, in order, until their message is read. `tags`: the
    tagged types this end decodes (PEER_TAGS for a connection to the listening socket)."""

    def __init__(self, sock: socket.socket, *, hold_gil: bool = False, tags: frozenset = ALL_TAGS):
        self.sock = sock
        self.fd = sock.fileno()
        self.fds: deque[int] = deque()
        self._buf = bytearray()
        self._hold_gil = hold_gil  # the caller's side: write without giving up the GIL (module docstring)
        self._tags = tags

    def send(self, message: tuple, fds: list[int] | tuple = ()) -> None:
        if self.fd < 0:
            raise PeerGone()
        frame = encode(message)
        try:
            if fds:
                sent = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                frame = frame[sent:]
            if frame and self._hold_gil:
                write_holding_gil(self.fd, frame)
            elif frame:
                self.sock.sendall(frame)
        except OSError:
            raise PeerGone() from None

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
            raise ProtocolViolation("more descriptors arrived at once than expected")
        if not data:
            return False
        self._buf += data
        return True

    def next_message(self) -> tuple | None:
        """The next complete message already read, or None. ProtocolViolation for a frame that is not ours."""
        buf = self._buf
        if len(buf) < _HEADER.size:
            if buf[:len(MAGIC)] != MAGIC[:len(buf)]:
                raise ProtocolViolation("a frame does not start with the engine protocol's magic")
            return None
        magic, n = _HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolViolation("a frame does not start with the engine protocol's magic")
        if n > MAX_HEADER:
            raise ProtocolViolation(f"a frame announces {n} bytes, more than {MAX_HEADER}")
        end = _HEADER.size + n
        if len(buf) < end:
            return None
        message = decode(memoryview(buf)[_HEADER.size:end], self._tags)
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
                raise PeerGone()

    def take_fd(self) -> int:
        if not self.fds:
            raise ProtocolViolation("an arena arrived without its file descriptor")
        return self.fds.popleft()

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()
        while self.fds:
            os.close(self.fds.popleft())


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket (SO_PEERCRED: the kernel's record of
    who connected, which the peer cannot forge)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


_libc_write = None


def write_holding_gil(fd: int, data: bytes) -> None:
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
                raise PeerGone()
        else:
            try:
                n = os.write(fd, view)
            except OSError:
                raise PeerGone() from None
        view = view[n:]


__all__ = ["ALL_TAGS", "Channel", "LoadRequest", "MAGIC", "MAX_HEADER", "PEER_TAGS", "PeerGone", "ProtocolViolation",
           "TENSOR_DTYPES", "check_arena", "check_drop", "check_hello", "check_infer", "decode", "encode", "peer_uid",
           "write_holding_gil"]
