"""Source detection: formats from files, clear errors for missing/corrupt files, Layers exported in eval mode."""
import shutil
import warnings

import numpy as np
import pytest

from ppdeploy.core.errors import SourceError
from ppdeploy.source import zoo
from ppdeploy.source.model import ONNX, PDMODEL, PIR, detect


def test_zoo_models_are_legacy_pdmodel():
    for name in zoo.MODELS:
        src = detect(name)
        assert src.kind == PDMODEL
        assert src.params_file.name == "inference.pdiparams"


def test_pir_directory_detected(demo_classifier_dir):
    src = detect(demo_classifier_dir)
    assert src.kind == PIR and src.model_file.name == "inference.json"


def test_onnx_file_detected(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert detect(path).kind == ONNX
    assert detect(tmp_path).kind == ONNX  # a folder with one .onnx


def test_missing_params_is_a_clear_error(tmp_path):
    shutil.copyfile(zoo.model_dir("ppocr-cls") / "inference.pdmodel", tmp_path / "inference.pdmodel")
    with pytest.raises(SourceError, match=r"params file missing: .*inference\.pdiparams"):
        detect(tmp_path)


def test_unreadable_params_is_a_clear_error(tmp_path):
    shutil.copyfile(zoo.model_dir("ppocr-cls") / "inference.pdmodel", tmp_path / "inference.pdmodel")
    (tmp_path / "inference.pdiparams").write_bytes(b"")
    with pytest.raises(SourceError, match=r"params file .*inference\.pdiparams is empty"):
        detect(tmp_path)


def test_corrupt_pdmodel_is_a_clear_error(tmp_path):
    data = (zoo.model_dir("ppocr-cls") / "inference.pdmodel").read_bytes()
    (tmp_path / "inference.pdmodel").write_bytes(data[: len(data) // 3])  # truncated download
    shutil.copyfile(zoo.model_dir("ppocr-cls") / "inference.pdiparams", tmp_path / "inference.pdiparams")
    with pytest.raises(SourceError, match="corrupt or truncated"):
        detect(tmp_path)


def test_corrupt_pir_json_is_a_clear_error(tmp_path, demo_classifier_dir):
    (tmp_path / "inference.json").write_text('{"program": ')
    shutil.copyfile(demo_classifier_dir / "inference.pdiparams", tmp_path / "inference.pdiparams")
    with pytest.raises(SourceError, match="not a valid Paddle PIR program"):
        detect(tmp_path)


def test_missing_path_and_unknown_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        detect(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="unrecognised model file"):
        detect(tmp_path / "weights.bin")


@pytest.mark.slow
def test_layer_in_train_mode_is_exported_in_eval_mode(tmp_path):
    import paddle

    from ppdeploy.deploy.load import load_model

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.BatchNorm1D(16), paddle.nn.Dropout(0.5),
                               paddle.nn.Linear(16, 3))
    net.train()
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    spec = [paddle.static.InputSpec([None, 8], "float32", "x")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dep = load_model(net, input_spec=spec, backend="onnxruntime", cache_dir=tmp_path)
    assert any("training mode" in str(w.message) for w in caught)
    assert not net.training
    expected = net(paddle.to_tensor(x)).numpy()  # eval mode: dropout off, running BN statistics
    got = dep.runner.infer({"x": x})
    np.testing.assert_allclose(next(iter(got.values())), expected, atol=1e-5)


def test_layer_exports_land_in_the_cache_by_content(tmp_path):
    import paddle

    from ppdeploy.source.model import from_layer

    paddle.seed(1)
    net = paddle.nn.Linear(8, 3)
    spec = [paddle.static.InputSpec([None, 8], "float32", "x")]
    first = from_layer(net, spec, exports_root=tmp_path)
    again = from_layer(net, spec, exports_root=tmp_path)
    assert first.directory == again.directory and first.directory.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]  # one folder, no staging left behind
    with paddle.no_grad():
        net.weight.set_value(net.weight + 1.0)
    changed = from_layer(net, spec, exports_root=tmp_path)
    assert changed.directory != first.directory and len(list(tmp_path.iterdir())) == 2


def test_layer_without_input_spec_is_rejected():
    import paddle

    with pytest.raises(SourceError, match="needs input_spec"):
        detect(paddle.nn.Linear(2, 2))


def test_loading_a_paddle_model_leaves_the_root_logger_alone(demo_classifier_dir):
    import logging
    import subprocess
    import sys

    # A fresh interpreter: paddle's import-time logging setup happens once per process.
    code = ("import logging; from ppdeploy.deploy.load import load_model; "
            f"d = load_model({str(demo_classifier_dir)!r}, backend='paddle'); "
            "root = logging.getLogger(); print(len(root.handlers), root.level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0", str(logging.WARNING)]
