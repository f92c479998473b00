"""paddle2onnx's Resize with empty `roi`/`scales` initializers (PP-YOLOE+'s upsampling) survives the FP16
conversion: before, ONNX Runtime refused the converted graph ("Either `sizes` or `scales` must be provided")."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ppdeploy.precision.fp16 import convert


def _upsample_model() -> onnx.ModelProto:
    empty = numpy_helper.from_array(np.zeros((0,), np.float32), "empty")
    sizes = numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "sizes")
    w = numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Resize", ["c", "empty", "empty", "sizes"], ["y"], mode="nearest")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [empty, sizes, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_fp16_graph_with_paddle2onnx_style_resize_runs_and_matches_fp32():
    model = _upsample_model()
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fp16 = convert(model)
    assert [n.input[1:3] for n in fp16.graph.node if n.op_type == "Resize"] == [["", ""]]
    got = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == (1, 2, 8, 8) and np.allclose(got, ref, atol=1e-2)
    assert [n.input[1] for n in model.graph.node if n.op_type == "Resize"] == ["empty"]  # the input is untouched
