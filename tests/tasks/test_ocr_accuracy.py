"""Accuracy proof: ppdeploy's OCR on every CPU backend against PaddleOCR's pipeline on Paddle Inference.

Reference: rapidocr_paddle 1.4.5 (PaddleOCR's PP-OCRv4 det / mobile-v2 cls / PP-OCRv4 rec pre/post-processing
re-packaged, running the same .pdmodel files on Paddle Inference), configured to ppdeploy's settings, which are
PaddleOCR's published PP-OCRv4 defaults instead of rapidocr's own config.yaml:
  det: limit_side_len 960 / limit_type max (rapidocr's get_preprocess ignores limit_side_len for "max", so it is
       patched to honour it), thresh 0.3, box_thresh 0.6 (rapidocr 0.5), unclip 1.5 (1.6), no dilation (rapidocr
       dilates), score_mode fast, ImageNet mean/std (rapidocr uses 0.5/0.5);
  cls: thresh 0.9, 3x48x192, batch 6;  rec: 3x48x320 dynamic width, batch 6, drop score 0.5;
  rapidocr's own extras are switched off: no letterbox padding (min_height 0, width_height_ratio -1), no
  max/min side resize before detection (max_side_len 100000, min_side_len 0).
  ppdeploy's adaptive det pass (DetOptions.adaptive, not PaddleOCR's) is off on ppdeploy's side: the reference
  detects once.
Both sides get the same decoded BGR arrays.
"""
from __future__ import annotations

import json

import pytest

from ppdeploy.tasks.ocr.metrics import score_dataset, text_agreement
from tests.tasks.conftest import score_against_reference

pytestmark = pytest.mark.slow

BACKENDS = ["onnxruntime", "openvino", "paddle"]


def reference_pipeline(threads: int | None = None):
    from rapidocr_paddle import RapidOCR
    from rapidocr_paddle.ch_ppocr_det.utils import DetPreProcess

    from ppdeploy.tasks.ocr.det import DetOptions

    d = DetOptions()
    ref = RapidOCR(
        det_limit_side_len=d.limit_side_len, det_limit_type=d.limit_type, det_thresh=d.thresh,
        det_box_thresh=d.box_thresh, det_unclip_ratio=d.unclip_ratio, det_donot_use_dilation=not d.use_dilation,
        det_score_mode=d.score_mode, det_mean=list(d.mean), det_std=list(d.std),
        text_score=0.5, min_height=0, width_height_ratio=-1, max_side_len=100000, min_side_len=0,
        cpu_math_library_num_threads=threads or -1,
    )
    det = ref.text_det
    det.get_preprocess = lambda max_wh: DetPreProcess(d.limit_side_len, d.limit_type, list(d.mean), list(d.std))
    assert det.postprocess_op.box_thresh == d.box_thresh
    assert (det.postprocess_op.dilation_kernel is None) == (not d.use_dilation)
    return ref


def single_pass(ocr):
    """ocr's pipeline (same runners and options) with the adaptive det pass off, as the reference detects."""
    import dataclasses

    from ppdeploy.tasks.ocr.pipeline import OCRPipeline

    options = dataclasses.replace(ocr.options, det=dataclasses.replace(ocr.options.det, adaptive=False))
    return OCRPipeline.from_runners(det=ocr.detector.runner, rec=ocr.recognizer.runner, cls=ocr.classifier.runner,
                                    options=options)


@pytest.fixture(scope="module")
def reference(labelled):
    images, gts = labelled
    ref = reference_pipeline()
    preds = []
    for img in images:
        res, _ = ref(img)
        preds.append([(text, box) for box, text, _score in (res or [])])
    return preds, score_dataset(preds, gts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_paddleocr_reference(backend, ocr_for, labelled, reference, capsys):
    images, gts = labelled
    ref_preds, ref_metrics = reference
    ocr = ocr_for(backend)
    assert set(ocr.backends.values()) == {backend}
    single = single_pass(ocr)
    preds = [[(line.text, line.box) for line in single.predict(img).lines] for img in images]
    metrics, agreement, report = score_against_reference(backend, preds, gts, ref_preds, ref_metrics)
    with capsys.disabled():
        print("\n" + json.dumps(report, ensure_ascii=False))

    assert ref_metrics.gt_lines >= 150
    # the reference itself must be a sane OCR on this set, or the comparison proves nothing
    assert ref_metrics.char_accuracy > 0.95 and ref_metrics.det_recall > 0.95
    assert abs(metrics.char_accuracy - ref_metrics.char_accuracy) <= 0.002, report
    assert agreement.rate >= 0.99, report


def test_agreement_check_detects_a_pipeline_that_is_not_paddleocrs(ocr_for, labelled, reference):
    """The >= 99 % gate has teeth: batching rec crops 12 at a time instead of PaddleOCR's 6 changes how much
    padding each crop gets, and that alone changes the text of several lines of this set."""
    from ppdeploy.tasks.ocr.builder import OCR

    images, _ = labelled
    ref_preds, _ = reference
    base = ocr_for("onnxruntime")
    other = OCR.from_runners(det=base.detector.runner, rec=base.recognizer.runner, cls=base.classifier.runner,
                             rec_batch_size=12, det_adaptive=False)
    half = len(images) // 2  # enough lines to show it, half the time
    preds = [[(line.text, line.box) for line in other.predict(img).lines] for img in images[:half]]
    assert text_agreement(preds, ref_preds[:half]).rate < 0.99
