"""The ctc_greedy output head (ppdeploy.graph.heads): exact against the softmax it replaces, on the real PP-OCRv4
rec model in ONNX Runtime and OpenVINO, through load_model, the OCR task and the TensorRT-RTX builder."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.core.errors import BackendUnavailable, ConfigError, ConversionError
from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB, add_head


@pytest.fixture(scope="module")
def rec_onnx() -> Path:
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    return to_onnx(detect("ppocrv4-rec")).onnx_path


def rec_batch(width: int = 320) -> np.ndarray:
    return np.random.default_rng(3).random((3, 3, 48, width), dtype=np.float32)


def tiny_ctc_model(path: Path, *, opset: int, softmax: bool, outputs: int = 1) -> Path:
    """x (N x T x 4) -> MatMul with a 4 x 5 weight -> [Softmax] -> y: a CTC-shaped model small enough to reason on."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(4, 5) / 7.0 - 1.0, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"])]
    last = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=2))
        last = "probs"
    outs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", "T", 5])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("logits" if softmax else "x", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "ctc", [x], outs, initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def ort_run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_head_is_exact_on_the_real_rec_model(rec_onnx, tmp_path):
    headed = tmp_path / "rec_greedy.onnx"
    add_head(rec_onnx, headed, "ctc_greedy")
    x = rec_batch()
    (probs,) = ort_run(rec_onnx, x)
    index, prob = ort_run(headed, x)
    assert index.dtype == np.int64 and index.shape == probs.shape[:2] and prob.shape == probs.shape[:2]
    np.testing.assert_array_equal(index, probs.argmax(axis=2))
    np.testing.assert_array_equal(prob, probs.max(axis=2))
    assert probs.nbytes / (index.nbytes + prob.nbytes) > 2000  # what a GPU copies back, per line


@pytest.mark.parametrize("opset", [13, 18])  # ReduceMax's axes moved from an attribute to an input in opset 18
@pytest.mark.parametrize("softmax", [True, False])
def test_head_on_softmax_or_logits_at_both_reducemax_forms(tmp_path, opset, softmax):
    src = tiny_ctc_model(tmp_path / "m.onnx", opset=opset, softmax=softmax)
    add_head(src, tmp_path / "h.onnx", "ctc_greedy")
    x = np.random.default_rng(0).standard_normal((2, 7, 4)).astype(np.float32)
    (y,) = ort_run(src, x)
    index, prob = ort_run(tmp_path / "h.onnx", x)
    e = np.exp(y - y.max(axis=2, keepdims=True))
    want = y if softmax else e / e.sum(axis=2, keepdims=True)  # logits: the head reports a probability
    np.testing.assert_array_equal(index, y.argmax(axis=2))
    np.testing.assert_allclose(prob, want.max(axis=2), rtol=1e-6)


def test_head_refuses_models_it_cannot_read(tmp_path):
    with pytest.raises(ConversionError, match="one output"):
        add_head(tiny_ctc_model(tmp_path / "two.onnx", opset=13, softmax=True, outputs=2), tmp_path / "o.onnx",
                 "ctc_greedy")
    import onnx
    from onnx import TensorProto, helper

    flat = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    onnx.save(helper.make_model(flat, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "flat.onnx"))
    with pytest.raises(ConversionError, match="rank 2"):
        add_head(tmp_path / "flat.onnx", tmp_path / "o.onnx", "ctc_greedy")
    with pytest.raises(ConversionError, match="unknown output head"):
        add_head(tmp_path / "flat.onnx", tmp_path / "o.onnx", "beam_search")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_load_model_with_head_matches_the_softmax_model(backend):
    from ppdeploy.deploy.load import load_model

    plain = load_model("ppocrv4-rec", backend=backend)
    headed = load_model("ppocrv4-rec", backend=backend, head="ctc_greedy")
    try:
        assert headed.head == "ctc_greedy" and headed.summary()["head"] == "ctc_greedy"
        assert [t.name for t in headed.runner.io.outputs] == [CTC_INDEX, CTC_PROB]
        assert headed.engine_dir != plain.engine_dir
        x = rec_batch(480)
        (probs,) = plain.runner.infer({"x": x}).values()
        out = headed.runner.infer({"x": x})
        np.testing.assert_array_equal(out[CTC_INDEX], probs.argmax(axis=2))
        np.testing.assert_allclose(out[CTC_PROB], probs.max(axis=2), rtol=1e-5, atol=1e-6)
        again = load_model("ppocrv4-rec", backend=backend, head="ctc_greedy")
        assert again.cache_hit and again.onnx_path == headed.onnx_path
        again.close()
    finally:
        plain.close()
        headed.close()


def test_paddle_inference_is_skipped_with_the_reason():
    from ppdeploy.deploy.load import load_model

    with pytest.raises(BackendUnavailable, match="original program"):
        load_model("ppocrv4-rec", backend="paddle", head="ctc_greedy")


def test_ocr_with_the_head_reads_the_same_lines_and_scores():
    import cv2

    from ppdeploy.tasks.ocr.builder import OCR

    page = np.full((200, 720, 3), 255, np.uint8)
    for row, text in enumerate(("Invoice 2026-11-25", "Total: 1,234.50 EUR", "ctc greedy head")):
        cv2.putText(page, text, (16, 52 + 60 * row), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (0, 0, 0), 2, cv2.LINE_AA)
    with OCR(backend="onnxruntime", use_cls=False, rec_head=None) as plain, \
            OCR(backend="onnxruntime", use_cls=False, rec_head="ctc_greedy") as headed:
        assert plain.deployments["rec"].head is None and headed.deployments["rec"].head == "ctc_greedy"
        a, b = plain.predict(page), headed.predict(page)
    assert len(a.lines) == 3 and "2026" in a.text
    assert [(line.text, line.box) for line in b.lines] == [(line.text, line.box) for line in a.lines]
    np.testing.assert_allclose([line.score for line in b.lines], [line.score for line in a.lines], rtol=1e-5)


def test_rec_head_choice():
    from ppdeploy.tasks.ocr.builder import rec_head_for

    assert rec_head_for("auto", "onnxruntime", "fp32", None) is None  # CPU: the host argmax is cheaper
    assert rec_head_for("ctc_greedy", "onnxruntime", "fp32", None) == "ctc_greedy"
    assert rec_head_for(None, "onnxruntime-cuda", "fp32", None) is None
    assert rec_head_for("auto", "openvino", "bf16", "fp32") is None  # guarded
    with pytest.raises(ConfigError, match="runner-up"):
        rec_head_for("ctc_greedy", "openvino", "bf16", "fp32")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None, reason="TensorRT-RTX not installed")
def test_tensorrt_rtx_builds_the_headed_rec(rec_onnx, tmp_path):
    from ppdeploy.backends import get_backend
    from ppdeploy.backends import tensorrt as trtmod
    from ppdeploy.backends.base import BuildOptions
    from ppdeploy.core.shapes import ShapeProfile

    headed = tmp_path / "rec_greedy.onnx"
    add_head(rec_onnx, headed, "ctc_greedy")
    shapes = ShapeProfile.from_dict({"x": {"min": [1, 3, 48, 16], "opt": [8, 3, 48, 320], "max": [32, 3, 48, 1280]}})
    (tmp_path / "engine").mkdir()
    get_backend("tensorrt-rtx").build(headed, tmp_path / "engine", BuildOptions(shapes=shapes))
    outputs = {o["name"]: o for o in trtmod.read_meta(tmp_path / "engine")["outputs"]}
    assert set(outputs) == {CTC_INDEX, CTC_PROB}
    assert outputs[CTC_INDEX]["dtype"] == "int64" and outputs[CTC_PROB]["dtype"] == "float32"


@pytest.mark.slow
def test_fp16_rec_with_the_head_passes_its_gate_and_keeps_the_text(tmp_path):
    """OCR(rec_head="auto") puts the head on FP16 rec on a GPU: the FP16 converter and the gate must take it, and the
    gate judges the ids as text (like the softmax's) and the probabilities by their absolute difference."""
    from ppdeploy.deploy.load import load_model

    fp32 = load_model("ppocrv4-rec", backend="onnxruntime")
    fp16 = load_model("ppocrv4-rec", backend="onnxruntime", precision="fp16", head="ctc_greedy", cache_dir=tmp_path)
    try:
        gate = fp16.precision_report["gate"]
        assert gate["passed"] and gate["metric"] == "ctc+prob_abs"
        assert gate["outputs"][CTC_INDEX]["agreement"] == 1.0 and gate["outputs"][CTC_PROB]["agreement"] > 0.99
        x = rec_batch()
        (probs,) = fp32.runner.infer({"x": x}).values()
        out = fp16.runner.infer({"x": x})
        assert out[CTC_INDEX].dtype == np.int64 and out[CTC_PROB].dtype == np.float32
        assert (out[CTC_INDEX] == probs.argmax(axis=2)).mean() > 0.99
        np.testing.assert_allclose(out[CTC_PROB], probs.max(axis=2), atol=2e-2)
    finally:
        fp32.close()
        fp16.close()
