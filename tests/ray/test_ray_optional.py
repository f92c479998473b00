"""Ray is an optional extra: without it, `ppdeploy serve --ray` fails with an install hint, and nothing else
imports it (the serve CLI only registers the flags)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.tensors import IOSpec, TensorSpec


def test_missing_ray_is_a_clear_error(monkeypatch):
    from ppdeploy.serve import ray as ppray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the extra is not installed
    with pytest.raises(PPDeployError, match="Ray Serve is not installed") as info:
        ppray.require_ray()
    assert "ppdeploy[ray]" in info.value.hint
    with pytest.raises(PPDeployError, match="not installed"):
        ppray.build_app([])


def test_cli_registers_ray_flags_without_importing_ray():
    code = ("import sys; from ppdeploy.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['serve', 'ocr', '--ray', '--replicas', '2', '--num-gpus-per-replica', '0.5']); "
            "assert (a.ray, a.replicas, a.num_gpus_per_replica) == (True, 2, 0.5), a; "
            "assert 'ray' not in sys.modules, 'ray imported at CLI start'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class AddOneRunner(Runner):
    """y = x + 1 in numpy; refuses inputs holding negative values, as a backend failing on one request would."""

    backend = "numpy"

    def __init__(self):
        super().__init__(IOSpec((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 4)),)))
        self.calls: list[int] = []

    def _infer(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise RuntimeError("negative input")
        return {"y": x + 1}


def test_run_grouped_batches_same_shapes_and_isolates_a_failing_request():
    from ppdeploy.serve.ray import run_grouped

    runner = AddOneRunner()
    requests = [{"x": np.full((n, 4), n, np.float32)} for n in (1, 2, 3)]
    results = run_grouped(runner, requests, batchable=True)
    assert runner.calls == [6]  # one execution for the three requests
    for n, result in zip((1, 2, 3), results):
        np.testing.assert_array_equal(result["outputs"]["y"], np.full((n, 4), n + 1))

    runner.calls.clear()
    requests.insert(1, {"x": -np.ones((1, 4), np.float32)})
    results = run_grouped(runner, requests, batchable=True)
    assert runner.calls == [7, 1, 1, 2, 3]  # the batch fails, then each request alone
    assert results[1] == {"error": "RuntimeError: negative input", "status": 500}
    assert [r["outputs"]["y"][0, 0] for i, r in enumerate(results) if i != 1] == [2, 3, 4]

    runner.calls.clear()
    wrong_dtype = run_grouped(runner, [{"x": np.zeros((1, 4), np.float64)}], batchable=True)
    assert wrong_dtype[0]["status"] == 400 and "float64" in wrong_dtype[0]["error"]


def test_run_grouped_reports_each_execution_once_with_the_replicas_queue_times():
    import time

    from ppdeploy.serve.ray import run_grouped

    runner = AddOneRunner()
    arrived = time.perf_counter_ns()
    requests = [{"x": np.full((n, 4), n, np.float32)} for n in (1, 2)] + [{"x": np.zeros((1, 3), np.float32)}]
    time.sleep(0.02)  # the requests waited ~20 ms in the replica before their batch started
    results = run_grouped(runner, requests, batchable=True, arrived_ns=[arrived, arrived + 5_000_000, arrived])
    merged = results[0]["execution"]
    assert {k: merged[k] for k in ("size", "requests")} == {"size": 3, "requests": 2}
    assert merged["infer_ns"] > 0 and len(merged["queue_ns"]) == 2
    assert 20e6 <= merged["queue_ns"][0] < 2e9 and merged["queue_ns"][0] - merged["queue_ns"][1] == 5_000_000
    assert "execution" not in results[1]  # counted once, on the first member's reply
    assert results[2]["status"] == 400 and "execution" not in results[2]  # refused before running: no execution
    assert "execution" not in run_grouped(runner, requests[:1], batchable=True)[0]  # only when asked


def test_ray_batcher_feeds_metrics_from_the_replicas_and_drains(tmp_path):
    """The gateway side, with a stand-in for the deployment handle (a real one needs a Ray cluster in this
    process, which tests/ray/test_ray_serve.py keeps out of pytest): metrics come from the replicas' records, and
    drain waits for the requests already sent while refusing new ones."""
    import asyncio

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.batcher import BatcherClosed
    from ppdeploy.serve.metrics import ServerMetrics
    from ppdeploy.serve.ray import RayModelBatcher, io_to_json

    class Method:
        def __init__(self):
            self.pending: list[tuple[asyncio.Future, dict]] = []

        def remote(self, feeds):
            future = asyncio.get_running_loop().create_future()
            self.pending.append((future, feeds))
            return future

    class Handle:
        infer = Method()

    cfg = ModelConfig(name="add", source="ppocr-cls", max_batch_size=4)
    metrics = ServerMetrics().model("add", "1")
    io = IOSpec((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 4)),))
    batcher = RayModelBatcher(cfg, Handle(), {"io": io_to_json(io), "batchable": True}, observer=metrics)

    async def main():
        await batcher.start()
        x = np.ones((2, 4), np.float32)
        sent = [asyncio.ensure_future(batcher.infer({"x": x})) for _ in range(2)]
        await asyncio.sleep(0.01)
        drained = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0.01)
        assert not drained.done() and batcher.queue_depth == 2  # two requests are still out
        try:
            await batcher.infer({"x": x})
            raise AssertionError("a draining batcher took a new request")
        except BatcherClosed:
            pass
        record = {"size": 4, "requests": 2, "input_ns": 10, "infer_ns": 3_000_000, "output_ns": 20,
                  "queue_ns": [7_000_000, 5_000_000]}
        (f1, _), (f2, _) = Handle.infer.pending
        f1.set_result({"outputs": {"y": x + 1}, "execution": record})
        f2.set_result({"outputs": {"y": x + 1}})
        results = await asyncio.gather(*sent)
        await asyncio.wait_for(drained, 5)
        return results

    first, second = asyncio.run(main())
    assert first.queue_ns == 7_000_000 and first.timings.size == 4 and second.queue_ns == 0
    stats = metrics.statistics()
    assert stats["execution_count"] == 1 and stats["inference_count"] == 4
    assert stats["inference_stats"]["queue"] == {"count": 2, "ns": 12_000_000}
    assert [b["batch_size"] for b in stats["batch_stats"]] == [4]
