"""`ppdeploy serve` as a child process on a free loopback port: for load tests, the benchmark suite and the
serving tests (one class for all of them)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ppdeploy.core.errors import PPDeployError
from ppdeploy.serve.health import wait_until_ready

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """Run `python -m ppdeploy serve ARGS --host 127.0.0.1 --port 0`.

    `start()` (or `with`) returns once the server printed its address and, with `wait_ready` (default), once
    /v2/health/ready answers 200; `stop()` sends SIGTERM (a graceful drain) and returns the exit code.
    `lines` collects the server's stderr as it runs: with `access_log=True`, one JSON access-log line per request.
    `get`/`post`/`metric` are small conveniences for tests (the last sums a Prometheus metric's samples).
    """

    def __init__(self, serve_args: Sequence[str], *, env: Mapping[str, str] | None = None, wait_ready: bool = True,
                 ready_timeout_s: float = 300.0, log_path: Path | None = None, access_log: bool = False):
        self.serve_args = [str(a) for a in serve_args]
        self.env = dict(env or {})
        self.wait_ready = wait_ready
        self.ready_timeout_s = ready_timeout_s
        self.log_path = log_path
        self.access_log = access_log
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.exit_code: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "ppdeploy", "serve", *self.serve_args, "--host", "127.0.0.1", "--port", "0"]
        if not self.access_log:
            cmd.append("--no-access-log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        found = threading.Event()

        def pump() -> None:  # keep reading stderr so the child never blocks on a full pipe
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = _LISTENING.search(line)
                if m and self.url is None:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        try:
            self._wait_started(found)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, found: threading.Event) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        found.wait(timeout=self.ready_timeout_s)
        if self.url is None:
            raise PPDeployError(f"ppdeploy serve did not start: {' / '.join(self.lines[-5:])}")
        if not self.wait_ready:
            return
        if not wait_until_ready(self.url, max(0.0, deadline - time.monotonic()), check_alive=self._check_alive):
            raise PPDeployError(f"ppdeploy serve was not ready after {self.ready_timeout_s:.0f}s: "
                                f"{' / '.join(self.lines[-5:])}")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise PPDeployError(f"ppdeploy serve exited with {self.proc.returncode}: {' / '.join(self.lines[-5:])}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int | None:
        """Signal the server (SIGTERM: drain, then exit 0), wait, and return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        if self.log_path is not None:
            Path(self.log_path).write_text("\n".join(self.lines) + "\n")
        return self.exit_code

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- conveniences ---------------------------------------------------------------------------------------
    @property
    def hostport(self) -> str:
        return (self.url or "").removeprefix("http://")

    @property
    def log_tail(self) -> list[str]:
        return self.lines[-20:]

    def get(self, path: str, **kw):
        import httpx

        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw):
        import httpx

        return httpx.post(self.url + path, timeout=30, **kw)

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `predicate` (HTTP errors count as not yet) until true; raise if the server exits or time runs out."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise PPDeployError(f"ppdeploy serve not {what} after {timeout_s} s: " + " / ".join(self.lines[-30:]))

    def metric(self, name: str, headers: dict | None = None, **labels: str) -> float:
        """Sum of the samples of Prometheus metric `name` whose labels include `labels`."""
        text = self.get("/metrics", headers=headers).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total
