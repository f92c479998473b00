"""`ppdeploy serve` as a child process on a free loopback port, for load tests and the benchmark suite."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from ppdeploy.errors import PPDeployError

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """Start `ppdeploy serve ARGS --port 0 --host 127.0.0.1`, wait until /v2/health/ready, stop with SIGTERM.

    `lines` collects the server's stderr as it runs (with access_log=True, one JSON access-log line per request)."""

    def __init__(self, serve_args: Sequence[str], *, ready_timeout_s: float = 300.0, log_path: Path | None = None,
                 access_log: bool = False):
        self.serve_args = list(serve_args)
        self.ready_timeout_s = ready_timeout_s
        self.log_path = log_path
        self.access_log = access_log
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.exit_code: int | None = None

    def __enter__(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "ppdeploy", "serve", *self.serve_args, "--host", "127.0.0.1", "--port", "0"]
        if not self.access_log:
            cmd.append("--no-access-log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        found = threading.Event()

        def pump() -> None:  # keep reading stderr so the child never blocks on a full pipe
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                m = _LISTENING.search(line)
                if m and self.url is None:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        try:
            self._wait_ready(found)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, found: threading.Event) -> None:
        from ppdeploy.serve.health import wait_until_ready

        deadline = time.monotonic() + self.ready_timeout_s
        found.wait(timeout=self.ready_timeout_s)
        if self.url is None:
            raise PPDeployError(f"ppdeploy serve did not start: {' / '.join(self.lines[-5:])}")

        def alive() -> None:
            if self.proc.poll() is not None:
                raise PPDeployError(f"ppdeploy serve exited with {self.proc.returncode}: {' / '.join(self.lines[-5:])}")

        if not wait_until_ready(self.url, max(0.0, deadline - time.monotonic()), check_alive=alive):
            raise PPDeployError(f"ppdeploy serve was not ready after {self.ready_timeout_s:.0f}s")

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        if self.log_path is not None:
            Path(self.log_path).write_text("\n".join(self.lines) + "\n")

    @property
    def log_tail(self) -> list[str]:
        return self.lines[-20:]
