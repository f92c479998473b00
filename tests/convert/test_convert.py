"""Paddle -> ONNX on the real models, by the route each format needs; failures name the op at fault."""
import onnx
import pytest

from ppdeploy.convert import pipeline as convert
from ppdeploy.core.errors import ConversionError
from ppdeploy.source.model import detect


@pytest.mark.parametrize("name", ["ppocrv4-det", "ppocrv4-rec", "ppocr-cls"])
def test_legacy_models_convert_with_dynamic_dims(name):
    result = convert.to_onnx(detect(name))
    assert result.route == "paddle2onnx-legacy" and result.converter_version == "1.3.1"
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value"), "batch dim must stay dynamic"
    assert result.facts["nodes"] < result.facts["nodes_before"], "onnxslim should have simplified the graph"


def test_pir_model_converts_with_paddle2onnx_2(demo_classifier_dir):
    result = convert.to_onnx(detect(demo_classifier_dir))
    assert result.route == "paddle2onnx-pir" and result.converter_version.startswith("2.")
    assert result.opset == 17


def test_second_conversion_is_a_cache_hit():
    convert.to_onnx(detect("ppocr-cls"))
    before = convert.CONVERSIONS["count"]
    again = convert.to_onnx(detect("ppocr-cls"))
    assert again.cache_hit and convert.CONVERSIONS["count"] == before


def test_opset_is_user_settable_and_validated(tmp_path):
    result = convert.to_onnx(detect("ppocr-cls"), opset=16)
    assert onnx.load(str(result.onnx_path)).opset_import[0].version == 16
    with pytest.raises(ConversionError, match="too old"):
        convert.to_onnx(detect("ppocr-cls"), opset=9)


@pytest.mark.slow
def test_unsupported_op_is_named(tmp_path):
    import paddle

    from ppdeploy.source.model import from_layer

    class Det(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(4, 4)

        def forward(self, x):
            return paddle.linalg.det(self.fc(x))  # no ONNX mapping in paddle2onnx 2.1

    src = from_layer(Det(), [paddle.static.InputSpec([None, 4, 4], "float32", "x")], export_dir=tmp_path / "m")
    with pytest.raises(ConversionError) as err:
        convert.to_onnx(src)
    message = str(err.value)
    assert "paddle2onnx-pir" in message and "unsupported Paddle op(s): det" in message
    assert "--backend paddle" in message  # says what to try
