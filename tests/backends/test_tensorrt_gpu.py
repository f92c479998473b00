"""TensorRT runtime-side tests that need a GPU (run on the device: scripts/gpu/README.md).

`CudaMemory`/`StagedBuffers` are the CUDA half of the TensorRT runner; they are tested here on their own because
no TensorRT runtime could execute on the GPU available to this project (TensorRT-RTX refuses compute capability
9.0; full TensorRT is not installable here). The RTX test accepts either outcome the library may give on a GPU
— correct outputs, or a clear PPDeployError — and never a crash.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.backends import tensorrt as trtmod
from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.shapes import ShapeProfile

pytestmark = pytest.mark.gpu


def test_cuda_memory_round_trip_through_pinned_staging():
    pytest.importorskip("cuda.bindings", reason="cuda-python not installed")
    cuda = trtmod.CudaMemory()
    try:
        stream = cuda.stream()
        shape = (8, 3, 48, 320)
        size = trtmod.nbytes(shape, "float32")
        a = trtmod.StagedBuffers.allocate(cuda, {"x": size})
        b = trtmod.StagedBuffers.allocate(cuda, {"x": size})
        b.host["x"][:] = 0xAB  # poison: the result must come from the device copy, not stale host memory
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ev = [cuda.event() for _ in range(4)]
        cuda.record(ev[0], stream)
        cuda.h2d(a.device["x"], a.host_ptr["x"], a.stage_in("x", x), stream)
        cuda.record(ev[1], stream)
        cuda.d2d(b.device["x"], a.device["x"], size, stream)
        cuda.record(ev[2], stream)
        cuda.d2h(b.host_ptr["x"], b.device["x"], size, stream)
        cuda.record(ev[3], stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(b.stage_out("x", shape, "float32"), x)
        assert all(cuda.elapsed_ms(ev[i], ev[i + 1]) >= 0 for i in range(3))
        half = x[:4]
        cuda.h2d(a.device["x"], a.host_ptr["x"], a.stage_in("x", half), stream)  # smaller shape, same buffer
        cuda.d2h(b.host_ptr["x"], a.device["x"], half.nbytes, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(b.stage_out("x", half.shape, "float32"), half)
        cuda.destroy_stream(stream)
    finally:
        cuda.close()


def test_tensorrt_rtx_runtime_runs_or_refuses_clearly(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from ppdeploy.backends import get_backend

    carried = os.environ.get("PPDEPLOY_TEST_ONNX_DIR")
    if carried:
        onnx_path = Path(carried) / "ppocr-cls.onnx"
    else:
        from ppdeploy.convert.pipeline import to_onnx
        from ppdeploy.source.model import detect

        onnx_path = to_onnx(detect("ppocr-cls")).onnx_path
    be = get_backend("tensorrt-rtx")
    opts = BuildOptions(shapes=ShapeProfile.from_dict(
        {"x": {"min": [1, 3, 48, 192], "opt": [8, 3, 48, 192], "max": [32, 3, 48, 192]}}))
    be.build(onnx_path, tmp_path, opts)
    reason = be.unavailable_reason()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    try:
        runner = be.load(tmp_path, opts)
        out = runner.infer(x)
    except PPDeployError as exc:
        assert reason is not None, f"backend claimed availability but failed: {exc}"
        return
    assert reason is None
    from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend

    cpu = OnnxRuntimeBackend()
    (tmp_path / "cpu").mkdir()
    cpu.build(onnx_path, tmp_path / "cpu", BuildOptions())
    ref = cpu.load(tmp_path / "cpu", BuildOptions()).infer(x)
    for k in ref:
        assert np.abs(out[k] - ref[k]).max() < 1e-3
    assert {"h2d", "compute", "d2h"} <= set(runner.last_timings)
    runner.close()
