"""Shared pieces for the serving tests: direct runners (the reference) and model repositories. A real server in a
subprocess is `ppdeploy.bench.server_process.ServerProcess`."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

CLS_OUT = "softmax_0.tmp_0"
REC_OUT = "softmax_11.tmp_0"


def _onnxruntime_runner(model: str):
    """The model on ONNX Runtime CPU: the direct reference the servers' answers are compared with."""
    from ppdeploy.deploy.load import load_model

    dep = load_model(model, backend="onnxruntime")
    yield dep.runner
    dep.close()


@pytest.fixture(scope="session")
def cls_runner():
    yield from _onnxruntime_runner("ppocr-cls")


@pytest.fixture(scope="session")
def rec_runner():
    yield from _onnxruntime_runner("ppocrv4-rec")


@pytest.fixture(scope="session")
def det_runner():
    yield from _onnxruntime_runner("ppocrv4-det")


def write_repo(root: Path, configs: dict[str, str]) -> Path:
    for name, text in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.yaml").write_text(text)
    return root


def random_line_image(rng: np.random.Generator, width: int = 160) -> np.ndarray:
    return rng.standard_normal((1, 3, 48, width), dtype=np.float32)


async def post_asgi(app, path: str, body: bytes) -> tuple[int, dict]:
    """POST a JSON body to the ASGI `app` in-process; (status, decoded JSON answer)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []
    answered = asyncio.Event()

    async def receive():  # as a server does: after the body, the next message is the disconnect, once answered
        if messages:
            return messages.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]) or b"{}")
