"""The OCR task gate (page character accuracy of the whole pipeline), the OpenVINO INT8 path, and `ppdeploy build`."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ppdeploy.precision.build import apply


@pytest.fixture(scope="session")
def ocr_pages(tmp_path_factory):
    """Two labelled synthetic pages for calibration and two others (another seed) for the gate."""
    from ppdeploy.tasks.ocr.fonts import cjk_fonts
    from ppdeploy.tasks.ocr.synth import SynthOptions, generate

    if not cjk_fonts():
        pytest.skip("no CJK font installed (fonts-wqy-microhei)")
    root = tmp_path_factory.mktemp("pages")
    generate(root / "calib", SynthOptions(pages=2, seed=31, max_side=640))
    generate(root / "eval", SynthOptions(pages=2, seed=32, max_side=640))
    return root / "calib", root / "eval"


@pytest.mark.slow
def test_int8_rec_gated_on_page_char_accuracy(rec_onnx, cls_onnx, ocr_pages, precision_cache):
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.precision.runners import ort_runner
    from ppdeploy.source.model import detect
    from ppdeploy.tasks.ocr.builder import OCR
    from ppdeploy.tasks.ocr.calibrate import ocr_calibration, ocr_char_accuracy

    calib_dir, eval_dir = ocr_pages
    det_onnx = to_onnx(detect("ppocrv4-det", None, export_dir=None), cache=EngineCache()).onnx_path
    runners = {"det": ort_runner(det_onnx), "rec": ort_runner(rec_onnx), "cls": ort_runner(cls_onnx)}
    calib = ocr_calibration("rec", calib_dir, det_runner=runners["det"])  # the crops the pipeline really sees
    assert len(calib) >= 8
    result = apply(rec_onnx, "int8", cache=precision_cache, calib=calib, method="entropy",
                   task_metric=ocr_char_accuracy(eval_dir, "rec", runners, OCR.from_runners), task_name="ocr page chars")
    gate = result.report["gate"]
    assert gate["gate"] == "ocr page chars" and gate["passed"]
    assert gate["reference"] > 0.7  # the FP32 pipeline really reads the pages (small fonts, some upside down)
    assert gate["loss"] <= 0.005


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed (pip install 'ppdeploy[nncf]')")
def test_int8_for_openvino_through_nncf(cls_onnx, cls_calib, precision_cache):
    result = apply(cls_onnx, "int8", cache=precision_cache, calib=cls_calib, quantizer="openvino")
    assert result.onnx_path.suffix == ".xml" and result.onnx_path.with_suffix(".bin").is_file()
    assert result.backend_hint == "openvino"
    assert result.report["gate"]["passed"] and result.report["int8"]["int8_nodes"] > 0

    from ppdeploy.precision.runners import backend_runner

    assert result.format == "openvino-ir"
    runner = backend_runner(result.onnx_path, "fp32", fmt="openvino-ir")
    probs = runner.infer(cls_calib.samples[0])[runner.output_names[0]]
    assert probs.shape == (1, 2) and np.isfinite(probs).all()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed (pip install 'ppdeploy[nncf]')")
def test_int8_for_openvino_with_bf16_for_the_rest(cls_calib, tmp_path):
    from ppdeploy.core.device import cpu_supports_bf16
    from ppdeploy.core.errors import PPDeployError
    from ppdeploy.deploy.load import load_model

    kwargs = dict(backend="openvino", precision="int8", calib=cls_calib, cache_dir=tmp_path / "cache")
    default = load_model("ppocr-cls", **kwargs)  # INT8 forced onto OpenVINO: NNCF's IR, not a QDQ graph
    native = "openvino-bf16" if cpu_supports_bf16() else "openvino"  # the rest at BF16 where the CPU has it
    assert default.precision_report["quantizer"] == native and default.onnx_path.suffix == ".xml"
    default.close()
    # The same default when OpenVINO is picked from a chain (as backend="auto" does), not only when forced.
    chained = load_model("ppocr-cls", **{**kwargs, "backend": ["openvino", "onnxruntime"]})
    assert chained.backend == "openvino" and chained.precision_report["quantizer"] == native
    assert chained.onnx_path == default.onnx_path
    chained.close()
    qdq = load_model("ppocr-cls", **{**kwargs, "backend": ["onnxruntime"]})  # ONNX Runtime runs the QDQ graph
    assert qdq.precision_report["quantizer"] != "openvino" and qdq.onnx_path.suffix == ".onnx"
    qdq.close()
    if not cpu_supports_bf16():
        with pytest.raises(PPDeployError, match="avx512_bf16"):
            load_model("ppocr-cls", precision_options={"quantizer": "openvino-bf16"}, **kwargs)
        return
    mixed = load_model("ppocr-cls", precision_options={"quantizer": "openvino-bf16"}, **kwargs)
    plain = load_model("ppocr-cls", precision_options={"quantizer": "openvino"}, **kwargs)
    try:
        assert mixed.precision_report["gate"]["passed"] and mixed.precision_report["quantizer"] == "openvino-bf16"
        hints = [d.runner._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() for d in (mixed, plain)]
        assert hints == ["bf16", "f32"]  # what the gate judged is what runs
        assert mixed.engine_dir != plain.engine_dir
        x = cls_calib.samples[0]
        a, b = (next(iter(d.runner.infer(x).values())) for d in (mixed, plain))
        assert a.shape == b.shape == (1, 2) and np.abs(a - b).max() < 0.1 and not np.array_equal(a, b)
    finally:
        mixed.close()
        plain.close()


def test_build_cli_reports_gate_and_cache(tmp_path, capsys, monkeypatch):
    from ppdeploy.cli import main

    from .test_fragile import outlier_convs

    model = outlier_convs(tmp_path / "outliers.onnx")
    npy = tmp_path / "npy"
    npy.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        np.save(npy / f"s{i:02d}.npy", rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    args = ["build", str(model), "--backend", "onnxruntime", "--precision", "int8", "--calib-npy", str(npy),
            "--max-loss", "0.02", "--metric", "rel_l2", "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    report = first["precision_report"]
    assert report["gate"]["passed"] and report["excluded"] == ["conv_b"] and not report["cache_hit"]

    assert main(args) == 0
    text = capsys.readouterr().out
    assert "gate: PASS" in text and "precision step: from cache" in text and "excluded 1" in text

    assert main(args + ["--no-repair"]) == 2  # the first candidate fails the gate: a clear error, no engine
    assert "fails its accuracy gate" in capsys.readouterr().err


def test_task_gate_data_is_part_of_the_precision_cache_key(cls_onnx, precision_cache, tmp_path):
    from ppdeploy.core.cache import folder_digest

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "labels.json").write_text("{}")
    first = folder_digest(tmp_path / "a")
    (tmp_path / "a" / "labels.json").write_text('{"images": []}')
    assert folder_digest(tmp_path / "a") != first

    def metric_on(data_hash):
        def metric(runner):
            return 1.0
        metric.data_hash = data_hash
        return metric

    results = [apply(cls_onnx, "fp16", cache=precision_cache, task_metric=metric_on(h), task_name="same name")
               for h in ("pages-1", "pages-1", "pages-2")]
    assert [r.cache_hit for r in results] == [False, True, False]  # new gate pages: judged again, not reused


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed (pip install 'ppdeploy[nncf]')")
def test_ocr_int8_from_a_folder_of_pages(ocr_pages, tmp_path, monkeypatch):
    """OCR(precision=..., calib=pages): calibrated on the crops the pipeline sees, gated on the labelled pages,
    NNCF on OpenVINO; INT8 rec is guarded by default, with its wider margin."""
    from ppdeploy.tasks.ocr.builder import OCR
    from ppdeploy.tasks.ocr.dataset import read_labelled_folder

    monkeypatch.setenv("PPDEPLOY_CACHE", str(tmp_path / "cache"))
    calib_dir, eval_dir = ocr_pages
    with pytest.raises(Exception, match="calibration"):  # INT8 without data: a clear error, not a guess
        OCR(backend="openvino", precision={"rec": "int8"})
    with OCR(backend="openvino", precision={"rec": "int8"}, calib=calib_dir, gate_data=eval_dir) as ocr:
        rec = ocr.deployments["rec"]
        assert rec.precision == "int8" and rec.precision_report["quantizer"] in ("openvino", "openvino-bf16")
        gate = rec.precision_report["gate"]
        assert gate["passed"] and gate["gate"].startswith("ocr_char_accuracy")
        assert ocr.deployments["cls"].precision == "fp32" and ocr.guarded
        assert ocr.recognizer.runner.margin == 2.0 and rec.speed_vs_fp32["ratio"] > 0
        page = read_labelled_folder(eval_dir)[0]
        lines = [line.text for line in ocr.predict(page.path).lines]
    with OCR(backend="openvino") as fp32:
        want = [line.text for line in fp32.predict(page.path).lines]
    assert len(lines) == len(want) and sum(a == b for a, b in zip(lines, want)) >= 0.6 * len(want)
    with OCR(backend="openvino", precision={"rec": "int8"}, calib=calib_dir, gate_data=eval_dir, rec_guard="fp32",
             rec_guard_margin=0.7) as guarded:
        assert guarded.guarded and guarded.deployments["rec"].cache_hit  # the same INT8 build, from the cache
        assert guarded.deployments["rec_guard"].precision == "fp32" and guarded.recognizer.runner.margin == 0.7
    from ppdeploy.deploy.select import first_runnable

    if first_runnable("auto") == "openvino":  # backend="auto" on a CPU machine: calibrated for OpenVINO too
        with OCR(precision={"rec": "int8"}, calib=calib_dir, gate_data=eval_dir) as auto:
            rec = auto.deployments["rec"]
            assert rec.backend == "openvino" and rec.precision_report["quantizer"] in ("openvino", "openvino-bf16")
            assert rec.cache_hit
