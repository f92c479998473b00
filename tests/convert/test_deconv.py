"""ConvTranspose (kernel == stride) as a 1x1 Conv + DepthToSpace (ppdeploy.graph.deconv): the same numbers in
ONNX Runtime on small graphs and on the real PP-OCRv4 det, and the cases it must leave alone, left alone."""
from __future__ import annotations

import numpy as np
import pytest

from ppdeploy.graph.deconv import deconv_as_depth_to_space


def deconv_model(*, kernel=2, stride=2, cin=3, cout=2, bias=True, opset=13, **attrs):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(kernel * 10 + cout)
    inits = [numpy_helper.from_array(rng.normal(size=(cin, cout // attrs.get("group", 1), kernel, kernel))
                                     .astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=(cout,)).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                            name="up", **attrs)
    graph = helper.make_graph([node, helper.make_node("Relu", ["y"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 5, 7])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, cout, "H", "W"])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("kernel,cout,bias", [(2, 2, True), (2, 1, False), (3, 4, True)])
def test_rewrite_computes_the_same_output(kernel, cout, bias):
    import onnx

    model = deconv_model(kernel=kernel, stride=kernel, cout=cout, bias=bias)
    x = np.random.default_rng(1).normal(size=(1, 3, 5, 7)).astype(np.float32)
    want = run(model, x)
    assert deconv_as_depth_to_space(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "DepthToSpace", "Relu"]
    assert {i.name for i in model.graph.initializer} == {"w__as_1x1"} | ({"b__as_1x1"} if bias else set())
    got = run(model, x)
    assert got.shape == want.shape == (1, cout, 5 * kernel, 7 * kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [
    {"kernel": 4, "stride": 2},  # overlapping windows
    {"pads": [1, 1, 1, 1]},
    {"cout": 4, "group": 3, "cin": 3},  # grouped (shapes aside, any group != 1 is left alone)
    {"output_padding": [1, 1]},
    {"dilations": [2, 2]},
    {"opset": 10},  # DepthToSpace has no CRD mode before opset 11
])
def test_rewrite_leaves_other_deconvolutions_alone(attrs):
    model = deconv_model(**attrs)
    before = model.SerializeToString()
    assert deconv_as_depth_to_space(model) == 0
    assert model.SerializeToString() == before


def test_rewrite_on_the_real_det_model_is_exact():
    import onnx

    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    model = onnx.load(str(to_onnx(detect("ppocrv4-det")).onnx_path))
    x = np.random.default_rng(2).uniform(-2, 2, (1, 3, 224, 320)).astype(np.float32)
    want = run(model, x)
    assert deconv_as_depth_to_space(model) == 2  # DB's two 2x2 / stride 2 upsamplings
    np.testing.assert_allclose(run(model, x), want, rtol=0, atol=1e-6)
