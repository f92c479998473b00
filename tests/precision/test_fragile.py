"""Small hand-built graphs whose failure modes are known: they prove the automatic repairs find the culprits."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ppdeploy.core.errors import AccuracyError, InputError
from ppdeploy.precision import int8
from ppdeploy.precision.build import CalibrationSet, apply


def fragile_layernorm(path, hidden: int = 64):
    """x -> MatMul(W) (activations ~ +-300) -> LayerNorm written out by hand, squaring with Mul, as some exporters
    do -> MatMul -> y. In FP16 x*x overflows (300^2 > 65504) and the variance turns inf: the output collapses.
    Mul is not on the default FP32 keep-list (Pow would be), so only the automatic repair can save it."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((hidden, hidden)) * 60).astype(np.float32)
    w2 = rng.standard_normal((hidden, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([1e-5], np.float32), "eps")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
        helper.make_node("ReduceMean", ["h"], ["mu"], name="ln_mean", axes=[-1]),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="ln_center"),
        helper.make_node("Mul", ["d", "d"], ["d2"], name="ln_square"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="ln_var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="ln_add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln_sqrt"),
        helper.make_node("Div", ["d", "std"], ["normed"], name="ln_div"),
        helper.make_node("MatMul", ["normed", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, "fragile_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    import onnx

    onnx.save(model, str(path))
    return path


def outlier_convs(path):
    """Two 1x1 convs. The second one's input has one channel ~1000x larger than the others, so one per-tensor
    UINT8 scale for that activation wipes out the small channels: quantizing `conv_b` ruins the output,
    quantizing `conv_a` costs nothing. The exclusion search must find `conv_b`."""
    rng = np.random.default_rng(1)
    wa = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    scale = np.ones((8, 1, 1, 1), np.float32)
    scale[0] = 1000.0
    wa = wa * scale  # channel 0 of conv_a's output is huge
    wb = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    wb[:, 0] = 1e-4  # ... and contributes almost nothing to conv_b's output, which the small channels carry
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["a", "wb"], ["y"], name="conv_b")]
    graph = helper.make_graph(nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    import onnx

    onnx.save(model, str(path))
    return path


def test_fp16_repair_keeps_the_overflowing_square_in_fp32(tmp_path, precision_cache):
    model = fragile_layernorm(tmp_path / "ln.onnx")
    rng = np.random.default_rng(5)
    data = CalibrationSet.from_arrays([{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(4)])

    with pytest.raises(AccuracyError, match="FP16 build fails"):
        apply(model, "fp16", cache=precision_cache, calib=data, repair=False, metric="rel_l2")

    result = apply(model, "fp16", cache=precision_cache, calib=data, metric="rel_l2")
    assert result.report["gate"]["passed"]
    assert "ln_square" in result.kept_fp32
    assert len(result.kept_fp32) <= 3  # bisection isolates the culprit, not half the graph
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(result.onnx_path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)  # really FP16
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O kept
    ref = ort.InferenceSession(str(model)).run(None, data.samples[0])[0]
    out = ort.InferenceSession(str(result.onnx_path)).run(None, data.samples[0])[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)


def test_int8_search_excludes_the_node_with_outlier_activations(tmp_path, precision_cache):
    model = outlier_convs(tmp_path / "outliers.onnx")
    rng = np.random.default_rng(2)
    data = CalibrationSet.from_arrays([{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(16)])

    with pytest.raises(AccuracyError) as err:
        apply(model, "int8", cache=precision_cache, calib=data, repair=False, metric="rel_l2", max_loss=0.02)
    assert "INT8 build fails" in str(err.value)

    result = apply(model, "int8", cache=precision_cache, calib=data, metric="rel_l2", max_loss=0.02)
    assert result.excluded == ["conv_b"]
    assert result.report["gate"]["passed"] and result.report["gate"]["loss"] <= 0.02
    assert result.report["int8"] == {"compute_nodes": 2, "int8_nodes": 1}
    ranked = sorted(result.report["search"]["sensitivity"], key=lambda s: -s["loss"])
    assert ranked[0]["nodes"] == ["conv_b"]


def test_calibration_is_cached_by_data_hash(tmp_path, precision_cache):
    model = outlier_convs(tmp_path / "outliers.onnx")
    rng = np.random.default_rng(3)
    data = CalibrationSet.from_arrays([{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(8)])
    before = int8.CALIBRATION_RUNS
    first = apply(model, "int8", cache=precision_cache, calib=data, exclude=["conv_b"], metric="rel_l2", max_loss=0.05)
    assert int8.CALIBRATION_RUNS == before + 1 and not first.report["calibration_cache_hit"]

    # A different exclusion list is a different graph (new precision entry) but the same ranges: no recalibration.
    second = apply(model, "int8", cache=precision_cache, calib=data, exclude=["conv_a", "conv_b"], metric="rel_l2",
                   max_loss=0.05)
    assert int8.CALIBRATION_RUNS == before + 1
    assert second.report["calibration_cache_hit"] and not second.cache_hit

    # The same request again is a cache hit of the whole step.
    third = apply(model, "int8", cache=precision_cache, calib=data, exclude=["conv_b"], metric="rel_l2", max_loss=0.05)
    assert third.cache_hit and third.onnx_path == first.onnx_path
    assert int8.CALIBRATION_RUNS == before + 1

    # New data (other hash) recalibrates.
    more = CalibrationSet.from_arrays(data.samples + data.samples[:1])
    apply(model, "int8", cache=precision_cache, calib=more, exclude=["conv_b"], metric="rel_l2", max_loss=0.05)
    assert int8.CALIBRATION_RUNS == before + 2


def test_bad_requests_are_clear_errors(tmp_path, precision_cache):
    model = outlier_convs(tmp_path / "outliers.onnx")
    with pytest.raises(InputError, match="INT8 needs calibration data"):
        apply(model, "int8", cache=precision_cache)
    with pytest.raises(InputError, match="unknown precision"):
        apply(model, "int4", cache=precision_cache)
    with pytest.raises(InputError, match="calibration method"):
        apply(model, "int8", cache=precision_cache, calib=[{"x": np.zeros((1, 4, 8, 8), np.float32)}], method="mse")
    with pytest.raises(InputError, match="inputs"):
        apply(model, "fp16", cache=precision_cache, calib=[{"y": np.zeros((1, 4, 8, 8), np.float32)}])
    with pytest.raises(InputError, match="does not exist"):
        CalibrationSet.from_npy(tmp_path / "missing", ["x"])
    assert apply(model, "fp32", cache=precision_cache).onnx_path == model  # fp32 is the input, untouched


def test_npy_folder_and_split_are_disjoint(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(10):
        np.save(tmp_path / f"s{i:02d}.npy", rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    data = CalibrationSet.from_npy(tmp_path, ["x"])
    assert len(data) == 10
    calib, held = data.split(0.25)
    calib_keys = {s["x"].tobytes() for s in calib}
    assert len(held) == 2 and not any(s["x"].tobytes() in calib_keys for s in held)
    assert CalibrationSet.from_npy(tmp_path, ["x"]).hash == data.hash  # content hash: stable across loads
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not a readable numpy file"):
        CalibrationSet.from_npy(tmp_path, ["x"])
