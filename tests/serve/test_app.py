"""The ASGI app in process (no sockets): wiring that needs exact control over timing."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ppdeploy.bench.serving import binary_infer_body
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app


async def asgi_post(app, path: str, body: bytes, headers: dict, gone: asyncio.Event | None = None) -> int:
    """One request; the client 'disconnects' when `gone` is set. Returns the response status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), str(v).encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await (gone or never).wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


@pytest.mark.slow
def test_a_client_that_disconnects_while_queued_is_dropped():
    app = build_app([ModelConfig.for_source("ppocr-cls", name="cls", backends=["onnxruntime"], max_batch_size=1)])
    body, header_len = binary_infer_body({"x": np.zeros((1, 3, 48, 64), np.float32)})
    headers = {"Inference-Header-Content-Length": header_len, "Content-Length": len(body)}

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            model = app.state.host.models["cls"]
            gate = threading.Event()
            model.batcher._executor.submit(gate.wait)  # hold the inference thread: what comes next must queue
            first = asyncio.ensure_future(asgi_post(app, "/v2/models/cls/infer", body, headers))
            await asyncio.sleep(0.05)  # the worker took it and waits for the thread
            gone = asyncio.Event()
            second = asyncio.ensure_future(asgi_post(app, "/v2/models/cls/infer", body, headers, gone))
            await asyncio.sleep(0.05)
            assert model.batcher.queue_depth == 1
            gone.set()
            assert await second == 499
            assert model.batcher.queue_depth == 0
            gate.set()
            assert await first == 200
            return model.metrics.statistics(), model.metrics.failure["CANCELED"].count

    stats, canceled = asyncio.run(main())
    assert canceled == 1
    assert stats["execution_count"] == 1 and stats["inference_stats"]["success"]["count"] == 1
    assert stats["inference_stats"]["fail"]["count"] == 1
