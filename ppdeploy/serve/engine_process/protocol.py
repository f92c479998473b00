"""The engine process's wire protocol: length-prefixed pickled messages over a unix stream socket.

A message is a tuple whose first item names it ("load", "hello", "ready", "arena", "drop", "infer", "ok",
"error", "close"); an arena's file descriptor rides as SCM_RIGHTS on the message that announces it. The caller's
side writes without giving up the GIL (`write_holding_gil`): a thread that releases the GIL while the event loop
keeps it busy waits up to a switch interval to get it back, so a call releases it only once, to read the reply.
"""
from __future__ import annotations

import array
import ctypes
import os
import pickle
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

_HEADER = struct.Struct("<I")  # frame length
_MAX_FDS = 16  # descriptors one read can carry (a message carries at most one)


@dataclass(frozen=True)
class LoadRequest:
    """What the child passes to `ppdeploy.deploy.load.load_model` (picklable: it crosses to the child)."""

    source: Any  # zoo name or path
    backend: Any  # str or list of backend names
    kwargs: dict[str, Any]
    label: str  # model name, for messages and the process title
    max_batch_size: int = 1  # rows one merged engine call may have (shared engine); 0/1: never merge


class PeerGone(Exception):
    """The socket hit EOF or a broken pipe: the process at the other end is gone (or closed the connection)."""


class Channel:
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
            raise PeerGone()
        data = pickle.dumps(message, protocol=5)
        frame = _HEADER.pack(len(data)) + data
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
                raise PeerGone()

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


def sockaddr(address: str) -> str:
    """'@name' is Linux's abstract socket 'name' (no file; written with '@' so it can travel in argv/env)."""
    return "\0" + address[1:] if address.startswith("@") else address


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


__all__ = ["Channel", "LoadRequest", "PeerGone", "sockaddr", "write_holding_gil"]
