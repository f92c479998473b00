"""The shared engine's socket: private to this uid, and nothing read from it is ever unpickled.

A real shared engine (ONNX Runtime, ppocr-cls) and real clients: a process of another uid (the tests run as root,
so a child can drop to nobody with setuid), and a process of this uid that sends pickles and malformed frames.
After each attack the engine must still answer a real caller correctly, and the pickle's side effect (a file)
must not exist.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ppdeploy.serve.engine_process as engine_process
from ppdeploy.core.errors import InputError
from ppdeploy.serve.engine_process import SharedEngine, connect_engine
from ppdeploy.serve.engine_process.errors import encode_error, rebuild_error
from ppdeploy.serve.engine_process.protocol import (
    MAGIC,
    Channel,
    ProtocolViolation,
    decode,
    encode,
)
from tests.serve.conftest import CLS_OUT

NOBODY = 65534


class _Touch:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _frames(marker: Path) -> list[bytes]:
    """What an attacker sends: the old protocol's frame (length + pickle), a frame of the new magic whose body is a
    pickle, and a well-formed frame whose tag is not accepted on a peer's connection."""
    evil = pickle.dumps(("hello", _Touch(str(marker))))
    return [struct.pack("<I", len(evil)) + evil,
            MAGIC + struct.pack("<I", len(evil)) + evil,
            MAGIC + struct.pack("<I", 80) + json.dumps({"k": "hello", "a": [{"$load": {}}]}).encode().ljust(80)]


_ATTACKER = r"""
import os, socket, sys
uid, address, payload_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
payload = open(payload_file, "rb").read()
if uid >= 0:
    os.setgid(uid); os.setuid(uid)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(address)
except OSError as exc:
    print("refused", exc.errno, flush=True); sys.exit(0)
s.settimeout(10)
try:
    s.sendall(payload)
    data = s.recv(1 << 16)
except (BrokenPipeError, ConnectionResetError) as exc:
    print("closed", type(exc).__name__, flush=True); sys.exit(0)
print("closed" if data == b"" else "answered " + data[:40].hex(), flush=True)
"""


def _attack(uid: int, address: str, payload: bytes, tmp_path: Path) -> str:
    payload_file = tmp_path / f"payload-{time.monotonic_ns()}"
    payload_file.write_bytes(payload)
    os.chmod(payload_file, 0o644)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _ATTACKER, str(uid), address, str(payload_file)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def engine():
    e = SharedEngine.start("ppocr-cls", backend="onnxruntime", label="cls", max_batch_size=4)
    yield e
    e.close()


def _serves_correctly(engine: SharedEngine, cls_runner) -> None:
    runner = connect_engine(engine.address, label="cls", timeout_s=10).runner
    try:
        x = np.random.default_rng(3).standard_normal((2, 3, 48, 192), dtype=np.float32)
        np.testing.assert_allclose(runner.infer(x)[CLS_OUT], cls_runner.infer(x)[CLS_OUT], rtol=0, atol=1e-5)
    finally:
        runner.close()


def test_the_socket_is_a_file_in_a_private_directory(engine):
    address = engine.address
    assert not address.startswith("@") and "\0" not in address
    run_dir = os.path.dirname(address)
    st = os.stat(run_dir)
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    sock = os.stat(address)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) & 0o077 == 0


def test_no_module_of_the_engine_process_unpickles():
    folder = Path(engine_process.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"import (c?pickle|marshal|shelve|dill)\b|from (c?pickle|marshal) import", text), path


@pytest.mark.skipif(os.getuid() != 0, reason="simulating another user needs root (setuid)")
def test_another_uid_is_refused_at_the_directory_and_again_by_the_engine(engine, cls_runner, tmp_path):
    marker = tmp_path / "pwned"
    frames = _frames(marker)
    # 1. as the engine is started: the 0700 run directory keeps other users from reaching the socket at all
    assert _attack(NOBODY, engine.address, frames[0], tmp_path).startswith("refused 13")  # EACCES
    # 2. with the directory and socket opened up (a careless chmod): the engine checks the peer's uid
    #    (SO_PEERCRED) and closes the connection before reading a byte
    run_dir = os.path.dirname(engine.address)
    os.chmod(run_dir, 0o755)
    os.chmod(engine.address, 0o777)
    try:
        for frame in frames:
            assert _attack(NOBODY, engine.address, frame, tmp_path).startswith("closed")
        # a well-formed hello from another uid gets no answer either
        assert _attack(NOBODY, engine.address, encode(("hello", "cls")), tmp_path).startswith("closed")
    finally:
        os.chmod(run_dir, 0o700)
        os.chmod(engine.address, 0o600)
    assert not marker.exists()
    _serves_correctly(engine, cls_runner)


def test_pickles_and_malformed_frames_from_this_uid_are_refused_without_effect(engine, cls_runner, tmp_path):
    marker = tmp_path / "pwned"
    for frame in _frames(marker) + [MAGIC + struct.pack("<I", 1 << 30),  # announces 1 GiB
                                    MAGIC + struct.pack("<I", 7) + b"[[[[[[[",  # not JSON
                                    encode(("infer", 1, [["x", "|O", [1], 0]], -1)),  # object dtype
                                    encode(("arena", 1, 4096)),  # an arena without its descriptor
                                    b"GET / HTTP/1.1\r\n\r\n"]:
        assert _attack(-1, engine.address, frame, tmp_path).startswith("closed"), frame[:20]
    assert not marker.exists()
    _serves_correctly(engine, cls_runner)


def test_the_decoder_builds_nothing_but_data():
    evil = pickle.dumps(_Touch("/tmp/ppdeploy-should-not-exist"))
    with pytest.raises(ProtocolViolation):
        decode(evil)
    body = json.dumps({"k": "hello", "a": [{"$load": {"source": "x"}}]}).encode()
    with pytest.raises(ProtocolViolation):
        decode(body, frozenset({"$tuple"}))
    with pytest.raises(ProtocolViolation):
        decode(b"[" * 100000)
    assert decode(encode(("ok", [("y", "<f4", (2, 3), 0)], 7, {"infer": 1.5}, None))[8:]) == \
        ("ok", [("y", "<f4", (2, 3), 0)], 7, {"infer": 1.5}, None)
    with pytest.raises(TypeError, match="cannot send"):
        encode(("load", object()))
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x80\x04\x95" + b"\0" * 10)  # a pickle's first bytes: refused at the magic, before any parse
        chan = Channel(a)
        assert chan.fill()
        with pytest.raises(ProtocolViolation, match="magic"):
            chan.next_message()
    finally:
        a.close()
        b.close()


def test_errors_cross_by_name_from_an_allow_list_only():
    err = rebuild_error(encode_error(InputError("bad shape", hint="send [1,3,48,192]")))
    assert type(err) is InputError and str(err) == "bad shape\n  hint: send [1,3,48,192]"
    for name in ("subprocess.Popen", "os.system", "builtins.SystemExit", "builtins.eval", "ppdeploy.os.system",
                 "ppdeploy.core.errors.os"):
        rebuilt = rebuild_error({"cls": name, "message": "touch /tmp/x", "hint": None, "traceback": "", "pid": 1})
        assert type(rebuilt) is RuntimeError and str(rebuilt) == f"{name}: touch /tmp/x"
    assert type(rebuild_error({"junk": 1})) is RuntimeError
