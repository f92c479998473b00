"""OCR calibration data and the OCR task metric, through the pipeline's own preprocessing.

Calibration must see what the model sees in production: page images -> det input; page images -> FP32 detection
-> crops -> rec/cls input (the crops the pipeline would really feed). The OCR gate is the task metric: page
character accuracy of the whole pipeline on a labelled folder, with the candidate model swapped into its stage
and the other stages at FP32. The pipeline is passed in as a `build` callable (OCRPipeline.from_runners), so this
module depends on the stages and the result type, not on the pipeline class.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ppdeploy.core.cache import folder_digest
from ppdeploy.core.errors import InputError
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.ocr.cls import ClsOptions
from ppdeploy.tasks.ocr.crop import crop_all
from ppdeploy.tasks.ocr.det import DetOptions, TextDetector, preprocess
from ppdeploy.tasks.ocr.evaluate import evaluate_ocr
from ppdeploy.tasks.ocr.rec import RecOptions
from ppdeploy.tasks.ocr.textline import fill_batch

OCR_ROLES = ("det", "rec", "cls")


def _rec_width(crop: np.ndarray, height: int, min_width: int) -> int:
    # A crop alone in its batch: as wide as its aspect ratio needs (PaddleOCR widens the batch, never squeezes).
    h, w = crop.shape[:2]
    return max(min_width, int(math.ceil(height * w / float(h))))


def ocr_preprocess(role: str, *, det_runner: Any = None, input_name: str = "x") -> Callable[[np.ndarray], Any]:
    """image (BGR) -> feeds for `role`. For rec/cls with a det runner, the image is a page and each detected
    crop becomes one sample; without one, the image is taken to be a text-line crop already."""
    if role not in OCR_ROLES:
        raise InputError(f"unknown OCR stage '{role}'", hint=f"choose from {', '.join(OCR_ROLES)}")
    if role == "det":
        options = DetOptions()
        return lambda bgr: {input_name: preprocess(bgr, options)[0]}

    rec, cls = RecOptions(), ClsOptions()
    detector = None
    if det_runner is not None:
        detector = TextDetector(det_runner)

    def line_feeds(crop: np.ndarray) -> dict[str, np.ndarray]:
        if role == "rec":
            return {input_name: fill_batch([crop], rec.image_height, _rec_width(crop, rec.image_height, rec.image_width))}
        return {input_name: fill_batch([crop], cls.image_height, cls.image_width)}

    def run(bgr: np.ndarray):
        if detector is None:
            return line_feeds(bgr)
        boxes = detector(bgr).boxes
        return [line_feeds(c) for c in crop_all(bgr, boxes)] if len(boxes) else []

    return run


def ocr_calibration(role: str, folder: str | Path, *, det_runner: Any = None, limit: int | None = None,
                    input_name: str = "x") -> CalibrationSet:
    return CalibrationSet.from_images(folder, ocr_preprocess(role, det_runner=det_runner, input_name=input_name),
                                      limit=limit)


def ocr_char_accuracy(data_dir: str | Path, role: str, runners: Mapping[str, Any], build: Callable[..., Any],
                      **ocr_options: Any) -> TaskMetric:
    """TaskMetric: page character accuracy on the labelled folder with the candidate as `role`'s runner.

    `runners` holds the FP32 runners of the other stages ("det", "rec", optionally "cls"); `build(det=, rec=,
    cls=, **ocr_options)` makes the pipeline (a callable image -> OCRResult) on them.
    """
    if role not in OCR_ROLES:
        raise InputError(f"unknown OCR stage '{role}'", hint=f"choose from {', '.join(OCR_ROLES)}")

    def metric(candidate: Any) -> float:
        stages = dict(runners)
        stages[role] = candidate
        ocr = build(det=stages["det"], rec=stages["rec"], cls=stages.get("cls"), **ocr_options)
        return float(evaluate_ocr(ocr, data_dir).metrics.char_accuracy)

    metric.__name__ = f"ocr_char_accuracy[{role}]"
    metric.data_hash = folder_digest(data_dir)  # the precision cache key must change when the gate's pages do
    return metric


