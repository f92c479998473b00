"""Shared pieces for the serving tests: direct runners (the reference), and a real server in a subprocess."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

CLS_OUT = "softmax_0.tmp_0"
REC_OUT = "softmax_11.tmp_0"


@pytest.fixture(scope="session")
def cls_runner():
    from ppdeploy.deploy import load_model

    dep = load_model("ppocr-cls", backend="onnxruntime")
    yield dep.runner
    dep.close()


@pytest.fixture(scope="session")
def rec_runner():
    from ppdeploy.deploy import load_model

    dep = load_model("ppocrv4-rec", backend="onnxruntime")
    yield dep.runner
    dep.close()


class ServerProcess:
    """`python -m ppdeploy serve ...` on a free loopback port; stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict | None = None, wait_ready: bool = True, timeout: float = 120):
        self.lines: list[str] = []
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ppdeploy", "serve", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env)
        self._port_seen = threading.Event()
        self.url = ""
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._port_seen.wait(timeout):
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        if wait_ready:
            self.wait(lambda: self.get("/v2/health/ready").status_code == 200, timeout, "ready")

    def _pump(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                self._port_seen.set()
        self._port_seen.set()

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n" + "\n".join(self.lines))
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not {what} after {timeout} s:\n" + "\n".join(self.lines[-30:]))

    def metric(self, name: str, headers: dict | None = None, **labels: str) -> float:
        text = self.get("/metrics", headers=headers).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_repo(root: Path, configs: dict[str, str]) -> Path:
    for name, text in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.yaml").write_text(text)
    return root


def random_line_image(rng: np.random.Generator, width: int = 160) -> np.ndarray:
    return rng.standard_normal((1, 3, 48, width), dtype=np.float32)
