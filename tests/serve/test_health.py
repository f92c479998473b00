"""wait_until_ready: the shared readiness poll used by the benchmark server process and the Ray launcher."""
import socket

import pytest

from ppdeploy.serve.health import wait_until_ready


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_times_out_on_a_port_nobody_listens_on():
    assert wait_until_ready(f"http://127.0.0.1:{_closed_port()}", 0.3, poll_s=0.05) is False


def test_a_dead_server_is_reported_at_once():
    def exited():
        raise RuntimeError("server process exited with 1")

    with pytest.raises(RuntimeError, match="exited with 1"):
        wait_until_ready(f"http://127.0.0.1:{_closed_port()}", 60, check_alive=exited)
