"""FP16, BF16 and INT8 builds of the real PP-OCRv4 rec, mobile-v2 cls and the exported (PIR) classifier pass their
accuracy gates against FP32, judged on data that calibration never saw."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.precision.build import apply
from ppdeploy.tasks.classification.calibrate import classification_accuracy

pytestmark = pytest.mark.slow


def _has_fp16_weights(path) -> bool:
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("name", ["rec", "cls"])
def test_fp16_ocr_models_pass_their_gate(name, request, precision_cache):
    model = request.getfixturevalue(f"{name}_onnx")
    calib = request.getfixturevalue(f"{name}_calib")
    gate_data = type(calib)(calib.samples[:8], calib.source)
    result = apply(model, "fp16", cache=precision_cache, calib=gate_data)
    gate = result.report["gate"]
    assert gate["passed"] and gate["loss"] <= 0.005
    assert gate["metric"] == ("ctc" if name == "rec" else "top1")
    assert _has_fp16_weights(result.onnx_path)


def test_fp16_classifier_passes_on_labelled_top1(classifier_onnx, classifier_data, precision_cache):
    data, labels = classifier_data
    result = apply(classifier_onnx, "fp16", cache=precision_cache, calib=data,
                   task_metric=classification_accuracy(data, labels), task_name="shapes top-1")
    gate = result.report["gate"]
    assert gate["passed"] and gate["reference"] >= 0.9  # the demo classifier is really trained
    assert _has_fp16_weights(result.onnx_path)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no avx512_bf16/AMX")
@pytest.mark.parametrize("name", ["rec", "cls", "classifier"])
def test_bf16_is_a_backend_hint_that_passes_its_gate(name, request, precision_cache, classifier_data):
    model = request.getfixturevalue(f"{name}_onnx")
    calib = classifier_data[0] if name == "classifier" else request.getfixturevalue(f"{name}_calib")
    data = type(calib)(calib.samples[:8], calib.source)
    # the classifier outputs logits: judge it by top-1 agreement, as a classifier is used
    result = apply(model, "bf16", cache=precision_cache, calib=data, metric="top1" if name == "classifier" else "auto")
    assert result.backend_hint == "bf16" and result.onnx_path == model  # the graph is untouched
    assert result.report["gate"]["passed"], result.report["gate"]
    assert result.key_parts()["backend_hint"] == "bf16"


def test_int8_rec_passes_on_held_out_lines(rec_onnx, rec_calib, precision_cache):
    result = apply(rec_onnx, "int8", cache=precision_cache, calib=rec_calib, method="entropy")
    report = result.report
    assert report["gate"]["passed"] and report["gate"]["metric"] == "ctc"
    assert report["gate"]["loss"] <= 0.01
    # calibrated on 24 lines, judged on the other 8
    assert report["data"]["calibration_samples"] == 24 and report["data"]["gate_samples"] == 8
    assert report["int8"]["int8_nodes"] >= report["int8"]["compute_nodes"] // 2  # most of the model is INT8
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # explicit Q/DQ: every backend sees the same INT8 graph


def test_int8_cls_and_classifier_pass(cls_onnx, cls_calib, classifier_onnx, classifier_data, precision_cache):
    cls = apply(cls_onnx, "int8", cache=precision_cache, calib=cls_calib)
    assert cls.report["gate"]["passed"] and cls.report["gate"]["metric"] == "top1"

    data, labels = classifier_data
    result = apply(classifier_onnx, "int8", cache=precision_cache, calib=data,
                   task_metric=classification_accuracy(data, labels), task_name="shapes top-1")
    gate = result.report["gate"]
    assert gate["passed"] and gate["reference"] >= 0.9 and gate["loss"] <= 0.01
    assert result.report["int8"]["int8_nodes"] > 0


def test_load_model_builds_int8_once_and_reuses_it(classifier_onnx, classifier_data, tmp_path):
    from ppdeploy.deploy.load import load_model
    from ppdeploy.precision import int8

    data, _ = classifier_data
    first = load_model(classifier_onnx, backend="onnxruntime", precision="int8", calib=data, cache_dir=tmp_path)
    runs = int8.CALIBRATION_RUNS
    assert first.precision_report["gate"]["passed"] and not first.precision_report["cache_hit"]
    x = data.samples[0]["x"]
    assert np.isfinite(first.runner.infer({"x": x})[first.runner.output_names[0]]).all()
    first.close()
    second = load_model(classifier_onnx, backend="onnxruntime", precision="int8", calib=data, cache_dir=tmp_path)
    assert second.precision_report["cache_hit"] and second.cache_hit is not None
    assert int8.CALIBRATION_RUNS == runs
    second.close()
