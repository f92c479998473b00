"""DynamicBatcher and BatchedRunner on real ONNX Runtime runners (the PP-OCR cls model and two tiny graphs)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend
from ppdeploy.core.errors import InputError
from ppdeploy.serve.batcher import (
    BatchedRunner,
    BatcherClosed,
    BatcherSettings,
    ClientGone,
    DynamicBatcher,
    InferenceFailed,
    QueueFull,
    RequestTimeout,
)
from tests.serve.conftest import CLS_OUT


class Recorder:
    def __init__(self):
        self.sizes: list[int] = []
        self.depths: list[int] = []

    def on_batch(self, timings, queue_ns):
        self.sizes.append(timings.size)

    def on_queue_depth(self, depth):
        self.depths.append(depth)


def tiny_runner(tmp_path_factory, kind: str):
    """'sum': y = x.sum(axis=2) for x [N,3,L] (zero padding along L changes nothing);
    'gather': y = table[idx] for idx [N,1] int64 (an index out of range fails inside ONNX Runtime)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if kind == "sum":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "L"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
        axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
        node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
        graph = helper.make_graph([node], "sum", [x], [y], [axes])
    else:
        idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 3])
        table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")
        node = helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)
        graph = helper.make_graph([node], "gather", [idx], [y], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = tmp_path_factory.mktemp(kind)
    onnx.save(model, d / "m.onnx")
    be = OnnxRuntimeBackend()
    (d / "art").mkdir()
    be.build(d / "m.onnx", d / "art", BuildOptions(threads=1))
    return be.load(d / "art", BuildOptions(threads=1))


@pytest.fixture(scope="module")
def sum_runner(tmp_path_factory):
    return tiny_runner(tmp_path_factory, "sum")


@pytest.fixture(scope="module")
def gather_runner(tmp_path_factory):
    return tiny_runner(tmp_path_factory, "gather")


async def started(runner, **settings) -> tuple[DynamicBatcher, Recorder]:
    rec = Recorder()
    b = DynamicBatcher("m", [runner], BatcherSettings(**settings), observer=rec)
    await b.start()
    return b, rec


def block_executor(b: DynamicBatcher) -> threading.Event:
    """Occupy the batcher's (single) inference thread until the event is set: deterministic queueing."""
    gate = threading.Event()
    b._executor.submit(gate.wait)
    return gate


async def queued_then_released(b: DynamicBatcher, feeds: list[dict], return_exceptions: bool = False) -> list:
    """Queue every request while the inference thread is blocked, then release it, so they batch deterministically;
    the results (or exceptions) in request order, after the batcher has drained."""
    gate = block_executor(b)
    futs = [asyncio.ensure_future(b.infer(f)) for f in feeds]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*futs, return_exceptions=return_exceptions)
    await b.drain()
    return results


def test_concurrent_requests_batch_and_match_unbatched(cls_runner):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((int(rng.integers(1, 3)), 3, 48, 192), dtype=np.float32) for _ in range(40)]
    expected = [cls_runner.infer({"x": x})[CLS_OUT] for x in xs]

    async def main():
        b, rec = await started(cls_runner, max_batch_size=8, max_queue_delay_ms=5)
        results = await asyncio.gather(*[b.infer({"x": x}) for x in xs])
        await b.drain()
        return results, rec

    results, rec = asyncio.run(main())
    assert max(rec.sizes) > 1 and max(rec.sizes) <= 8
    assert sum(rec.sizes) == sum(x.shape[0] for x in xs)  # every row ran exactly once
    for res, exp in zip(results, expected):
        np.testing.assert_allclose(res.outputs[CLS_OUT], exp, rtol=1e-5, atol=1e-6)


def test_incompatible_shapes_form_separate_batches(cls_runner):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 3, 48, w), dtype=np.float32) for w in (96, 192, 96, 160, 192, 96)]

    async def main():
        b, rec = await started(cls_runner, max_batch_size=8, max_queue_delay_ms=20)
        return await queued_then_released(b, [{"x": x} for x in xs]), rec

    results, rec = asyncio.run(main())
    assert sorted(rec.sizes) == [1, 2, 3]  # widths 96 x3, 192 x2, 160 x1
    for res, x in zip(results, xs):
        np.testing.assert_allclose(res.outputs[CLS_OUT], cls_runner.infer({"x": x})[CLS_OUT], rtol=1e-5, atol=1e-6)


def test_padding_lets_different_lengths_share_a_batch(sum_runner):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 3, n), dtype=np.float32) for n in (5, 9, 2, 7)]

    async def main():
        b, rec = await started(sum_runner, max_batch_size=8, max_queue_delay_ms=20, pad={"x": (2,)})
        return await queued_then_released(b, [{"x": x} for x in xs]), rec

    results, rec = asyncio.run(main())
    assert rec.sizes == [4]
    for res, x in zip(results, xs):
        np.testing.assert_allclose(res.outputs["y"], x.sum(axis=2), rtol=1e-5)


def test_one_failing_request_does_not_fail_its_batch(gather_runner):
    idx = [np.array([[i]], dtype=np.int64) for i in (1, 2, 99, 3)]  # 99 is out of the table's range

    async def main():
        b, rec = await started(gather_runner, max_batch_size=8, max_queue_delay_ms=20)
        return await queued_then_released(b, [{"idx": i} for i in idx], return_exceptions=True)

    results = asyncio.run(main())
    # ONNX Runtime's INVALID_ARGUMENT on the request's own data: the client's error (400), not a server fault
    assert isinstance(results[2], InputError) and not isinstance(results[2], InferenceFailed)
    assert "idx [1, 1]" in str(results[2]) and "out of data bounds" in str(results[2])
    for k in (0, 1, 3):
        np.testing.assert_array_equal(results[k].outputs["y"], np.arange(30, dtype=np.float32).reshape(10, 3)[idx[k][:, 0]][:, None])


def test_full_queue_refuses_at_once_and_accepted_requests_are_answered(cls_runner):
    x = np.ones((1, 3, 48, 64), np.float32)

    async def main():
        b, rec = await started(cls_runner, max_batch_size=1, max_queue_size=2)
        gate = block_executor(b)
        first = asyncio.ensure_future(b.infer({"x": x}))
        await asyncio.sleep(0.02)  # the worker took it and waits for the thread
        queued = [asyncio.ensure_future(b.infer({"x": x})) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull) as err:
            await b.infer({"x": x})
        assert err.value.retry_after_s >= 1 and err.value.status == 429
        gate.set()
        results = await asyncio.gather(first, *queued)
        await b.drain()
        return results

    results = asyncio.run(main())
    assert len(results) == 3 and all(r.outputs[CLS_OUT].shape == (1, 2) for r in results)


def test_timeout_and_disconnect_drop_queued_requests(cls_runner):
    x = np.ones((1, 3, 48, 64), np.float32)

    async def main():
        b, rec = await started(cls_runner, max_batch_size=1)
        gate = block_executor(b)
        # Taken at once (the worker is idle), held past its 50 ms deadline by the blocked thread (>= 70 ms below):
        # a request already taken finishes. 50 ms, not 1: a loaded CI machine may take a few ms to schedule it.
        running = asyncio.ensure_future(b.infer({"x": x}, timeout_ms=50))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimeout):
            await b.infer({"x": x}, timeout_ms=30)
        gone = asyncio.Event()
        leaver = asyncio.ensure_future(b.infer({"x": x}, disconnected=gone.wait))
        await asyncio.sleep(0.02)
        gone.set()
        with pytest.raises(ClientGone):
            await leaver
        gate.set()
        result = await running
        await b.drain()
        return result, rec

    result, rec = asyncio.run(main())
    assert result.outputs[CLS_OUT].shape == (1, 2)
    assert rec.sizes == [1]  # the timed-out and the disconnected request never ran
    assert rec.depths[-1] == 0


def test_invalid_requests_are_refused_before_queueing(cls_runner):
    async def main():
        b, _ = await started(cls_runner, max_batch_size=4)
        with pytest.raises(InputError, match="max_batch_size"):
            await b.infer({"x": np.ones((5, 3, 48, 64), np.float32)})
        with pytest.raises(InputError, match="dtype"):
            await b.infer({"x": np.ones((1, 3, 48, 64), np.float64)})
        with pytest.raises(InputError, match="unknown input"):
            await b.infer({"y": np.ones((1, 3, 48, 64), np.float32)})
        assert b.queue_depth == 0
        await b.drain()
        with pytest.raises(BatcherClosed):
            await b.infer({"x": np.ones((1, 3, 48, 64), np.float32)})

    asyncio.run(main())


def test_batched_runner_from_threads_chunks_and_batches(cls_runner):
    rng = np.random.default_rng(3)
    big = rng.standard_normal((11, 3, 48, 100), dtype=np.float32)  # more rows than max_batch_size: chunked
    small = [rng.standard_normal((1, 3, 48, 100), dtype=np.float32) for _ in range(12)]

    async def main():
        b, rec = await started(cls_runner, max_batch_size=4, max_queue_delay_ms=5)
        runner = BatchedRunner(b)
        assert runner.io == cls_runner.io
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            outs = await asyncio.gather(loop.run_in_executor(pool, runner.infer, {"x": big}),
                                        *[loop.run_in_executor(pool, runner.infer, {"x": s}) for s in small])
        with pytest.raises(RuntimeError, match="event loop"):
            runner.infer({"x": small[0]})
        await b.drain()
        return outs, rec

    outs, rec = asyncio.run(main())
    assert max(rec.sizes) <= 4 and max(rec.sizes) > 1
    np.testing.assert_allclose(outs[0][CLS_OUT], cls_runner.infer({"x": big[:4]})[CLS_OUT].tolist()
                               + cls_runner.infer({"x": big[4:8]})[CLS_OUT].tolist()
                               + cls_runner.infer({"x": big[8:]})[CLS_OUT].tolist(), rtol=1e-5, atol=1e-6)
    for out, s in zip(outs[1:], small):
        np.testing.assert_allclose(out[CLS_OUT], cls_runner.infer({"x": s})[CLS_OUT], rtol=1e-5, atol=1e-6)


def test_drain_answers_everything_queued(cls_runner):
    x = np.ones((1, 3, 48, 64), np.float32)

    async def main():
        b, rec = await started(cls_runner, max_batch_size=2)
        gate = block_executor(b)
        futs = [asyncio.ensure_future(b.infer({"x": x})) for _ in range(7)]
        await asyncio.sleep(0.02)
        drain = asyncio.ensure_future(b.drain())
        await asyncio.sleep(0.02)
        assert not drain.done()
        with pytest.raises(BatcherClosed):
            await b.infer({"x": x})
        gate.set()
        await drain
        return [f.result() for f in futs], rec

    results, rec = asyncio.run(main())
    assert len(results) == 7 and sum(rec.sizes) == 7
