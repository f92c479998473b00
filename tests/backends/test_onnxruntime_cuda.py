"""ONNX Runtime CUDA backend. The first half runs anywhere (options, build, availability); the `gpu` half runs on the
device machine (scripts/gpu/README.md) and checks parity with the CPU reference, buffer reuse and CUDA graphs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.backends import get_backend
from ppdeploy.backends import onnxruntime_cuda as ortcuda
from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.errors import BuildError, InputError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec, TensorSpec

SHAPES = {"ppocrv4-det": (1, 3, 640, 640), "ppocrv4-rec": (4, 3, 48, 320), "ppocr-cls": (6, 3, 48, 192)}


def ocr_onnx(name: str) -> Path:
    carried = os.environ.get("PPDEPLOY_TEST_ONNX_DIR")
    if carried:
        return Path(carried) / f"{name}.onnx"
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    return to_onnx(detect(name)).onnx_path


# ------------------------------------------------------------------------------------------------ anywhere

def test_tf32_is_off_by_default_and_can_be_enabled():
    assert ortcuda.CudaSettings.from_options(BuildOptions()).provider_options()["use_tf32"] == "0"
    assert ortcuda.CudaSettings.from_options(BuildOptions(extra={"use_tf32": True})).provider_options()["use_tf32"] == "1"
    assert ortcuda.CudaSettings.from_options(BuildOptions(extra={"tf32": True})).use_tf32 is True


def test_bad_options_are_build_errors():
    with pytest.raises(BuildError, match="conv_algo_search"):
        ortcuda.CudaSettings.from_options(BuildOptions(extra={"conv_algo_search": "FAST"}))
    with pytest.raises(BuildError, match="max_cached_shapes"):
        ortcuda.CudaSettings.from_options(BuildOptions(extra={"max_cached_shapes": 0}))


def test_key_parts_follow_numerics_switches():
    be = ortcuda.OnnxRuntimeCUDABackend()
    keys = {str(be.key_parts(BuildOptions(extra=e))) for e in ({}, {"use_tf32": True}, {"cuda_graph": True},
                                                                  {"conv_algo_search": "HEURISTIC"})}
    assert len(keys) == 4
    assert be.key_parts()["version"] == be.version()


def test_cuda_graph_needs_fixed_shapes():
    io = IOSpec((TensorSpec("x", "float32", (None, 3, 48, None)),), ())
    with pytest.raises(BuildError, match="cuda_graph needs fixed input shapes"):
        ortcuda.check_cuda_graph_shapes(io, BuildOptions())
    fixed = ShapeProfile.from_dict({"x": {"min": [8, 3, 48, 320], "opt": [8, 3, 48, 320], "max": [8, 3, 48, 320]}})
    ortcuda.check_cuda_graph_shapes(io, BuildOptions(shapes=fixed))


def test_build_copies_a_valid_model_and_rejects_garbage(tmp_path):
    be = ortcuda.OnnxRuntimeCUDABackend()
    be.build(ocr_onnx("ppocr-cls"), tmp_path, BuildOptions())
    assert (tmp_path / ortcuda.ARTIFACT).stat().st_size == ocr_onnx("ppocr-cls").stat().st_size
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError, match="not a valid ONNX model"):
        be.build(junk, tmp_path / "o", BuildOptions())


def test_unavailable_reason_is_precise_here():
    import onnxruntime as ort

    reason = get_backend("onnxruntime-cuda").unavailable_reason()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert reason.startswith("library missing: onnxruntime") and "onnxruntime-gpu" in reason
    else:
        from ppdeploy.core.device import gpu_info

        assert (reason is None) == bool(gpu_info())


def test_load_where_cuda_cannot_run_is_a_clear_error(tmp_path):
    be = ortcuda.OnnxRuntimeCUDABackend()
    if be.unavailable_reason() is None:
        pytest.skip("CUDA is available here")
    be.build(ocr_onnx("ppocr-cls"), tmp_path, BuildOptions())
    with pytest.raises(BuildError, match="cannot run here"):
        be.load(tmp_path, BuildOptions())


# ------------------------------------------------------------------------------------------------ on a GPU

def _cpu_runner(tmp_path: Path, name: str):
    from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend()
    tmp_path.mkdir(parents=True, exist_ok=True)
    be.build(ocr_onnx(name), tmp_path, BuildOptions())
    return be.load(tmp_path, BuildOptions())


def _gpu_runner(tmp_path: Path, name: str, **extra):
    be = ortcuda.OnnxRuntimeCUDABackend()
    assert be.unavailable_reason() is None, be.unavailable_reason()
    tmp_path.mkdir(parents=True, exist_ok=True)
    be.build(ocr_onnx(name), tmp_path, BuildOptions(extra=extra))
    return be.load(tmp_path, BuildOptions(extra=extra))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_with_cpu_reference_tf32_off(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPES[name]).astype(np.float32)
    ref = _cpu_runner(tmp_path / "cpu", name).infer(x)
    gpu = _gpu_runner(tmp_path / "gpu", name)
    out = gpu.infer(x)
    for k in ref:
        assert out[k].shape == ref[k].shape
        assert np.isfinite(out[k]).all()
        assert np.abs(out[k] - ref[k]).max() < 1e-3, (k, float(np.abs(out[k] - ref[k]).max()))
    assert set(gpu.last_timings) >= {"h2d", "compute", "d2h", "infer"}


@pytest.mark.gpu
def test_device_buffers_are_reused_per_shape(tmp_path):
    runner = _gpu_runner(tmp_path, "ppocr-cls", max_cached_shapes=2)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3, 48, 192)).astype(np.float32)
    b = rng.standard_normal((2, 3, 48, 192)).astype(np.float32)
    out_a = runner.infer(a)
    sets = dict(runner._sets)
    key = next(iter(sets))
    ptr = sets[key].inputs["x"].data_ptr()
    out_b = runner.infer(b)
    assert runner._sets[key].inputs["x"].data_ptr() == ptr  # same device buffer, new contents
    assert not np.allclose(out_a[runner.output_names[0]], out_b[runner.output_names[0]])
    again = runner.infer(a)
    np.testing.assert_allclose(again[runner.output_names[0]], out_a[runner.output_names[0]], rtol=0, atol=1e-6)
    for n in (3, 4, 5):
        runner.infer(rng.standard_normal((n, 3, 48, 192)).astype(np.float32))
    assert len(runner._sets) == 2  # LRU bound holds


@pytest.mark.gpu
def test_cuda_graph_replay_matches_plain_run(tmp_path):
    fixed = {"x": {"min": [8, 3, 48, 320], "opt": [8, 3, 48, 320], "max": [8, 3, 48, 320]}}
    be = ortcuda.OnnxRuntimeCUDABackend()
    opts = BuildOptions(shapes=ShapeProfile.from_dict(fixed), extra={"cuda_graph": True})
    be.build(ocr_onnx("ppocrv4-rec"), tmp_path, opts)
    graph = be.load(tmp_path, opts)
    plain = _gpu_runner(tmp_path / "plain", "ppocrv4-rec")
    rng = np.random.default_rng(2)
    for _ in range(3):  # capture happens after ORT's warm-up runs; check replays with fresh inputs
        x = rng.standard_normal((8, 3, 48, 320)).astype(np.float32)
        got, want = graph.infer(x), plain.infer(x)
        for k in want:
            assert np.abs(got[k] - want[k]).max() < 1e-4
    with pytest.raises(InputError):
        graph.infer(np.zeros((4, 3, 48, 320), np.float32))


def test_tensorrt_provider_goes_first_with_its_cache_beside_the_artifact(tmp_path):
    plain = ortcuda.providers_for(ortcuda.CudaSettings(), tmp_path / "entry")
    assert [p if isinstance(p, str) else p[0] for p in plain] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = ortcuda.providers_for(ortcuda.CudaSettings(tensorrt_provider=True), tmp_path / "entry")
    name, opts = trt[0]
    assert name == "TensorrtExecutionProvider" and opts["trt_engine_cache_path"] == str(tmp_path / "_ort-trt-cache")
    assert opts["trt_fp16_enable"] == "False"  # precision comes from the graph
    be = ortcuda.OnnxRuntimeCUDABackend()
    assert be.key_parts(BuildOptions(extra={"tensorrt_provider": True})) != be.key_parts(BuildOptions())


# ------------------------------------------------------------------------------------------------ shape slots (CPU)
# The runner's bookkeeping (session per shape, batch buckets, buffer reuse) is provider-independent; here it runs on
# ORT's CPU provider with CPU OrtValues, which exercises the same IO-binding calls as on the GPU.

def _cpu_slot_runner(name: str, **extra):
    import onnxruntime as ort

    path = str(ocr_onnx(name))
    opts = BuildOptions(extra=extra)
    return ortcuda.OnnxRuntimeCUDARunner(
        lambda: ort.InferenceSession(path, providers=["CPUExecutionProvider"]), opts,
        ortcuda.CudaSettings.from_options(opts), device="cpu")


def test_batch_buckets():
    assert [ortcuda.batch_bucket(n, None) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert ortcuda.batch_bucket(33, 40) == 40 and ortcuda.batch_bucket(50, 40) == 50
    x = np.ones((3, 2), np.float32)
    padded, real = ortcuda.pad_batch({"x": x}, {"x"}, None)
    assert real == 3 and padded["x"].shape == (4, 2) and not padded["x"][3].any()


def test_session_per_shape_slots_pad_and_slice():
    import onnxruntime as ort

    runner = _cpu_slot_runner("ppocr-cls", max_cached_shapes=2)
    ref = ort.InferenceSession(str(ocr_onnx("ppocr-cls")), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for n, sessions in ((3, 1), (4, 1), (5, 2), (8, 2), (1, 3)):
        x = rng.uniform(-1, 1, (n, 3, 48, 192)).astype(np.float32)
        out = runner.infer(x)
        want = ref.run(None, {"x": x})[0]
        got = out[runner.output_names[0]]
        assert got.shape == want.shape  # padded rows sliced off
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert runner.sessions_created == sessions, (n, runner.sessions_created)
    assert len(runner._sets) == 2  # LRU bound: bucket 1 and bucket 8 remain
    shared = _cpu_slot_runner("ppocr-cls", session_per_shape=False)
    for n in (1, 2, 4):
        shared.infer(np.zeros((n, 3, 48, 192), np.float32) + 0.5)
    assert shared.sessions_created == 1 and len(shared._sets) == 3


def test_warm_up_creates_every_batch_bucket_of_the_profile():
    runner = _cpu_slot_runner("ppocr-cls")
    profile = ShapeProfile.from_dict({"x": {"min": [1, 3, 48, 192], "opt": [8, 3, 48, 192], "max": [24, 3, 48, 192]}})
    runner._batch_limit = 24  # as load() derives it from the profile
    shapes = runner.warm_up(profile)
    assert [s[0] for s in shapes] == [1, 2, 4, 8, 16, 24] and all(s[1:] == (3, 48, 192) for s in shapes)
    assert runner.sessions_created == 6
    runner.infer(np.ones((13, 3, 48, 192), np.float32))  # bucket 16: already warm, no new session
    assert runner.sessions_created == 6
    assert runner.warm_up(ShapeProfile()) == []


def test_warm_up_stays_inside_the_profile():
    # A fixed profile (the CUDA-graph case) warms its one batch; a profile starting at 4 warms nothing below 4.
    # (On the H100 the fixed case failed: bucket 1 was run against a min=max=8 profile.)
    for lo, hi, want in ((8, 8, [8]), (4, 24, [4, 8, 16, 24])):
        runner = _cpu_slot_runner("ppocr-cls")
        runner._batch_limit = hi
        profile = ShapeProfile.from_dict({"x": {"min": [lo, 3, 48, 192], "opt": [hi, 3, 48, 192],
                                                "max": [hi, 3, 48, 192]}})
        assert [s[0] for s in runner.warm_up(profile)] == want


def test_pad_multiple_buckets_shapes_and_crops_det_maps():
    x = np.ones((1, 3, 500, 700), np.float32)
    padded, orig = ortcuda.pad_axes({"x": x}, {"x": {"2": 320, "3": 320}})
    assert padded["x"].shape == (1, 3, 640, 960) and orig == {"x": (1, 3, 500, 700)}
    assert padded["x"][:, :, 500:].sum() == 0 and padded["x"][:, :, :500, :700].all()
    outs = ortcuda.crop_outputs({"map": np.zeros((1, 1, 640, 960)), "seq": np.zeros((1, 240, 10))}, padded, orig)
    assert outs["map"].shape == (1, 1, 500, 700) and outs["seq"].shape == (1, 240, 10)  # other ranks untouched
    runner = _cpu_slot_runner("ppocrv4-det", pad_multiple={"x": {"2": 320, "3": 320}})
    for h, w in ((480, 640), (544, 608), (640, 416)):  # three page sizes, one bucket
        img = np.random.default_rng(h).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        out = runner.infer(img)
        assert out[runner.output_names[0]].shape[-2:] == (h, w)
    assert len(runner._sets) == 1 and runner.sessions_created == 1
