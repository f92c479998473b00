"""The db_logits head (ppdeploy.convert.heads): the DB detector's final Sigmoid moved to the host. Exact against the
graph's own Sigmoid on the real PP-OCRv4 det model in ONNX Runtime and OpenVINO, through load_model, the OCR task and
the precision gates' metric."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.convert.heads import DB_LOGITS, add_head
from ppdeploy.errors import ConfigError, ConversionError
from ppdeploy.tasks.ocr.det import sigmoid

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


@pytest.fixture(scope="module")
def det_onnx() -> Path:
    from ppdeploy.convert import to_onnx
    from ppdeploy.source import detect

    return to_onnx(detect("ppocrv4-det")).onnx_path


def text_page() -> np.ndarray:
    import cv2

    page = np.full((224, 736, 3), 255, np.uint8)
    for row, text in enumerate(("Invoice 2026-11-25", "Total: 1,234.50 EUR", "db logits head")):
        cv2.putText(page, text, (16, 56 + 64 * row), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (0, 0, 0), 2, cv2.LINE_AA)
    return page


def det_input() -> np.ndarray:
    from ppdeploy.tasks.ocr.det import DetOptions, preprocess

    return preprocess(text_page(), DetOptions())[0]


def test_head_returns_the_map_before_the_sigmoid(det_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    headed = tmp_path / "det_logits.onnx"
    add_head(det_onnx, headed, DB_LOGITS)
    graph = onnx.load(str(headed)).graph
    assert [o.name for o in graph.output] == [DB_LOGITS]
    assert graph.node[-1].op_type != "Sigmoid" and not any(n.op_type == "Sigmoid" and DB_LOGITS in n.output
                                                           for n in graph.node)
    x = det_input()
    (probs,) = ort.InferenceSession(str(det_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (logits,) = ort.InferenceSession(str(headed), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert logits.shape == probs.shape and logits.min() < -5 and logits.max() > 5  # logits, not probabilities
    np.testing.assert_allclose(sigmoid(logits), probs, atol=1e-6)
    assert (probs > 0.3).sum() > 1000  # the page has text: the comparison covers the boxes' pixels


def test_host_sigmoid_saturates_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sigmoid(np.array([[-1000.0, -20.0, 0.0, 20.0, 1000.0]], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 2.06e-9, 0.5, 1.0, 1.0]], rtol=1e-2, atol=1e-12)


def _model(tmp_path: Path, nodes, outputs, name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 1, 4, 4]) for o in outputs])
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_head_refuses_graphs_without_a_final_sigmoid_of_its_own(tmp_path):
    from onnx import helper

    relu = _model(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], ["y"], "relu.onnx")
    with pytest.raises(ConversionError, match="comes from Relu"):
        add_head(relu, tmp_path / "o.onnx", DB_LOGITS)
    two = _model(tmp_path, [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
                 ["y", "r"], "two.onnx")
    with pytest.raises(ConversionError, match="one output"):
        add_head(two, tmp_path / "o.onnx", DB_LOGITS)
    shared = _model(tmp_path, [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["s"]),
                               helper.make_node("Add", ["r", "s"], ["y0"]), helper.make_node("Sigmoid", ["y0"], ["y"])],
                    ["y"], "ok.onnx")
    add_head(shared, tmp_path / "ok_logits.onnx", DB_LOGITS)  # the last Sigmoid alone feeds on y0: fine
    fed_twice = _model(tmp_path, [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"]),
                                  helper.make_node("Neg", ["r"], ["unused"])], ["y"], "fed_twice.onnx")
    with pytest.raises(ConversionError, match="feed it alone"):
        add_head(fed_twice, tmp_path / "o.onnx", DB_LOGITS)


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_load_model_with_the_head_finds_the_same_boxes(backend):
    from ppdeploy.deploy import load_model
    from ppdeploy.tasks.ocr.det import TextDetector

    plain = load_model("ppocrv4-det", backend=backend)
    headed = load_model("ppocrv4-det", backend=backend, head=DB_LOGITS)
    try:
        assert [t.name for t in headed.runner.io.outputs] == [DB_LOGITS] and headed.engine_dir != plain.engine_dir
        a, b = TextDetector(plain.runner)(text_page()), TextDetector(headed.runner)(text_page())
        assert len(a.boxes) == 3
        np.testing.assert_array_equal(b.boxes, a.boxes)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    finally:
        plain.close()
        headed.close()


def test_det_head_choice():
    from ppdeploy.tasks.ocr.pipeline import det_head_for

    assert det_head_for("auto", "onnxruntime") is None  # ~1 ms there, about what the host sigmoid costs
    assert det_head_for(DB_LOGITS, "onnxruntime") == DB_LOGITS
    assert det_head_for(None, "openvino") is None
    if importlib.util.find_spec("openvino") is not None:
        assert det_head_for("auto", "openvino") == DB_LOGITS
        assert det_head_for("auto", "auto") == DB_LOGITS  # OpenVINO is the CPU's first choice
    with pytest.raises(ConfigError, match="det_head"):
        det_head_for("ctc_greedy", "openvino")


def test_ocr_reads_the_same_lines_with_the_head():
    from ppdeploy.tasks.ocr.pipeline import OCR

    with OCR(backend="onnxruntime", use_cls=False, det_head=None) as plain, \
            OCR(backend="onnxruntime", use_cls=False, det_head=DB_LOGITS) as headed:
        assert plain.deployments["det"].head is None and headed.deployments["det"].head == DB_LOGITS
        a, b = plain.predict(text_page()), headed.predict(text_page())
    assert len(a.lines) == 3 and "2026" in a.text
    assert [(line.text, line.box) for line in b.lines] == [(line.text, line.box) for line in a.lines]


def test_gates_judge_logits_at_the_logit_of_the_threshold():
    from ppdeploy.precision.compare import agreement, pick_metric

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (1, 1, 32, 32)).astype(np.float32)
    moved = logits + rng.normal(0, 0.5, logits.shape).astype(np.float32)
    assert pick_metric(logits, DB_LOGITS) == "logit_mask_iou"
    on_logits = agreement([{DB_LOGITS: logits}], [{DB_LOGITS: moved}])
    on_probs = agreement([{"p": sigmoid(logits)[None]}], [{"p": sigmoid(moved)[None]}], metric="mask_iou")
    assert on_logits["outputs"][DB_LOGITS]["metric"] == "logit_mask_iou"
    assert on_logits["agreement"] == pytest.approx(on_probs["agreement"]) and on_logits["agreement"] < 1
