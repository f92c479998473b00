"""OCR model generations (ppdeploy.tasks.ocr.models) and the PP-OCRv6 files from rapidocr 3.10's wheel: zoo names,
the dictionary read from the rec model's metadata, the graph tools (FP32 encoder region, ctc_greedy head) on the v6
graphs, and Paddle Inference's clear refusal."""
from __future__ import annotations

import numpy as np
import pytest

from ppdeploy.core.errors import BackendUnavailable, ConfigError
from ppdeploy.source import wheel_models, zoo
from ppdeploy.tasks.ocr.models import MODEL_SETS, model_dictionary, stage_models
from ppdeploy.tasks.ocr.rec import load_characters


def test_v6_zoo_names_are_bundled_models_of_the_ocr_task_only():
    from ppdeploy.tasks.detection.task import Detector

    for name in ("ppocrv6-det", "ppocrv6-rec", "ppocrv6-cls"):
        assert zoo.is_bundled(name) and name in zoo.names()
        assert zoo.resolve(name) == wheel_models.model_path(name) and zoo.resolve(name).suffix == ".onnx"
        assert Detector.role_of(name) is None  # not mistaken for a layout detector
        assert zoo.example_shape(name) == wheel_models.MODELS[name].example_shape
    assert set(wheel_models.DETECTION) == {"layout-cdla"}
    assert Detector.role_of("layout-cdla") == "model"


def test_model_sets_and_per_stage_overrides():
    assert stage_models() == MODEL_SETS["ppocrv4"].stages
    assert stage_models("ppocrv6") == {"det": "ppocrv6-det", "cls": "ppocrv6-cls", "rec": "ppocrv6-rec"}
    assert stage_models("ppocrv6", rec="my_rec.onnx")["rec"] == "my_rec.onnx"
    with pytest.raises(ConfigError, match="ppocrv6"):
        stage_models("ppocrv5")


def test_a_set_carries_the_options_its_models_need_under_the_callers():
    from ppdeploy.tasks.ocr.models import set_options

    half = (0.5, 0.5, 0.5)
    assert set_options("ppocrv4", {}) == {}
    assert set_options("ppocrv6", {"det_thresh": 0.2}) == {"det_mean": half, "det_std": half, "det_thresh": 0.2}
    assert set_options("ppocrv6", {"det_mean": (0.4, 0.4, 0.4), "det_std": None})["det_mean"] == (0.4, 0.4, 0.4)
    # a detector of one's own does not get PP-OCRv6's normalization
    assert set_options("ppocrv6", {}, stage_models("ppocrv6", det="my_det.onnx")) == {}


def test_the_v6_dictionary_comes_from_the_rec_model_and_fits_its_classes():
    import onnx

    path = model_dictionary("ppocrv6-rec")
    assert path is not None
    chars = load_characters(path)
    rec = onnx.load(str(zoo.resolve("ppocrv6-rec")), load_external_data=False)
    classes = rec.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    assert len(chars) == classes == 18710  # blank + 18708 from the metadata + space
    assert len(chars) != len(load_characters(None))  # not ppocr_keys_v1.txt
    assert model_dictionary("ppocrv4-rec") is None  # a Paddle model carries none: ppocr_keys_v1.txt stays the default
    assert model_dictionary("ppocrv6-rec") == path  # written once


def test_the_fp32_encoder_region_is_found_in_the_v6_detector():
    import onnx

    from ppdeploy.graph import model as graph_model
    from ppdeploy.graph import regions

    det = onnx.load(str(zoo.resolve("ppocrv6-det")))
    graph_model.name_nodes(det)
    encoder = set(regions.onnx_encoder_nodes(det))
    ops = {n.name: n.op_type for n in det.graph.node}
    assert 0.3 * len(ops) < len(encoder) < len(ops)
    assert not any(ops[n] in regions.ONNX_UPSAMPLING for n in encoder)  # it ends before the first upsampling
    assert "Conv" in {ops[n] for n in encoder}


def test_the_ctc_greedy_head_applies_to_the_v6_recognizer(tmp_path):
    import onnxruntime as ort

    from ppdeploy.graph.heads import CTC_GREEDY, CTC_INDEX, CTC_PROB, add_head

    src = zoo.resolve("ppocrv6-rec")
    add_head(src, tmp_path / "rec_head.onnx", CTC_GREEDY)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 160)).astype(np.float32)
    probs = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    head = ort.InferenceSession(str(tmp_path / "rec_head.onnx"), providers=["CPUExecutionProvider"])
    index, prob = head.run([CTC_INDEX, CTC_PROB], {"x": x})
    np.testing.assert_array_equal(index, probs.argmax(-1))
    np.testing.assert_allclose(prob, probs.max(-1), rtol=1e-5)


def test_paddle_inference_refuses_v6_clearly():
    from ppdeploy.tasks.ocr.builder import OCR

    with pytest.raises(BackendUnavailable, match="needs a Paddle model, not an ONNX file"):
        OCR(models="ppocrv6", backend="paddle")
