"""Faithfulness of PP-OCRv6: ppdeploy's pipeline against rapidocr 3.10's own, at equal settings, on the same pages.

Reference: `rapidocr==3.10.0` (the package that ships PP-OCRv6 as ONNX) on its ONNX Runtime engine, running the very
files `OCR(models="ppocrv6")` loads, configured to ppdeploy's settings instead of its own config.yaml (read from
OCROptions with the ppocrv6 set's own options, so the two cannot drift apart): det limit/type, thresholds, unclip,
dilation, score mode, mean/std (0.5 for PP-OCRv6, as rapidocr's); cls
threshold and batch; rec batch; drop score. rapidocr's own extras are switched off: no resize of the page before
detection (use_preprocess_img) and no letterbox padding (use_vertical_padding). Both read the same decoded BGR
arrays. Its dictionary comes from the rec model's metadata, as ppdeploy's does (ppdeploy.tasks.ocr.models).
"""
from __future__ import annotations

import json

import pytest

from ppdeploy.tasks.ocr.metrics import score_dataset, text_agreement
from tests.tasks.conftest import score_against_reference

pytestmark = pytest.mark.slow

BACKENDS = ["onnxruntime", "openvino"]


def reference_pipeline(threads: int = 2):
    from rapidocr import RapidOCR

    from ppdeploy.tasks.ocr.models import set_options
    from ppdeploy.tasks.ocr.pipeline import OCROptions

    o = OCROptions.from_kwargs(**set_options("ppocrv6", {}))
    d = o.det
    return RapidOCR(params={
        "Global.use_preprocess_img": False, "Global.use_vertical_padding": False, "Global.text_score": o.drop_score,
        "Global.log_level": "warning",
        "Det.limit_side_len": d.limit_side_len, "Det.limit_type": d.limit_type, "Det.thresh": d.thresh,
        "Det.box_thresh": d.box_thresh, "Det.unclip_ratio": d.unclip_ratio, "Det.use_dilation": d.use_dilation,
        "Det.score_mode": d.score_mode, "Det.mean": list(d.mean), "Det.std": list(d.std),
        "Cls.cls_thresh": o.cls.thresh, "Cls.cls_batch_num": o.cls.batch_size, "Rec.rec_batch_num": o.rec.batch_size,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
    })


def lines_of(result) -> list[tuple[str, list]]:
    if result.boxes is None or result.txts is None:
        return []
    return [(text, box.tolist()) for box, text in zip(result.boxes, result.txts)]


@pytest.fixture(scope="module")
def reference(labelled):
    images, gts = labelled
    ref = reference_pipeline()
    preds = [lines_of(ref(img)) for img in images]
    return preds, score_dataset(preds, gts)


@pytest.fixture(scope="module")
def v6_for():
    from ppdeploy.tasks.ocr.builder import OCR

    built: dict[str, OCR] = {}

    def get(backend: str) -> OCR:
        if backend not in built:
            built[backend] = OCR(models="ppocrv6", backend=backend, threads=2)
        return built[backend]

    yield get
    for ocr in built.values():
        ocr.close()


def test_the_reference_runs_the_files_ppdeploy_loads():
    """Equal settings need equal models: rapidocr's default PP-OCRv6 files are ppdeploy's ppocrv6 zoo files."""
    import hashlib
    from pathlib import Path

    import rapidocr

    from ppdeploy.source import wheel_models

    models = Path(rapidocr.__file__).parent / "models"
    for name in ("ppocrv6-det", "ppocrv6-rec", "ppocrv6-cls"):
        model = wheel_models.MODELS[name]
        assert hashlib.sha256((models / model.filename).read_bytes()).hexdigest() == model.sha256
        assert hashlib.sha256(wheel_models.model_path(name).read_bytes()).hexdigest() == model.sha256


@pytest.mark.parametrize("backend", BACKENDS)
def test_v6_matches_rapidocr_310(backend, v6_for, labelled, reference, capsys):
    images, gts = labelled
    ref_preds, ref_metrics = reference
    ocr = v6_for(backend)
    assert set(ocr.backends.values()) == {backend}
    preds = [[(line.text, line.box) for line in ocr.predict(img).lines] for img in images]
    metrics, agreement, report = score_against_reference(backend, preds, gts, ref_preds, ref_metrics)
    with capsys.disabled():
        print("\n" + json.dumps(report, ensure_ascii=False))

    assert ref_metrics.gt_lines >= 150
    # the reference itself must be a sane OCR on this set, or the comparison proves nothing
    assert ref_metrics.char_accuracy > 0.9 and ref_metrics.det_recall > 0.9, report
    assert abs(metrics.char_accuracy - ref_metrics.char_accuracy) <= 0.002, report
    assert agreement.rate >= 0.99, report


def test_agreement_check_detects_a_pipeline_that_is_not_rapidocrs(v6_for, labelled, reference):
    """The >= 99 % gate has teeth: batching rec crops 12 at a time instead of 6 changes how much padding each crop
    gets, and that alone changes the text of several lines of this set (0.95 of them identical when measured)."""
    from dataclasses import replace

    from ppdeploy.tasks.ocr.builder import OCR

    images, _ = labelled
    ref_preds, _ = reference
    base = v6_for("onnxruntime")
    options = replace(base.options, rec=replace(base.options.rec, batch_size=12))  # all else as the test above
    other = OCR.from_runners(det=base.detector.runner, rec=base.recognizer.runner, cls=base.classifier.runner,
                             options=options)
    half = len(images) // 2  # enough lines to show it, half the time
    preds = [[(line.text, line.box) for line in other.predict(img).lines] for img in images[:half]]
    assert text_agreement(preds, ref_preds[:half]).rate < 0.99
