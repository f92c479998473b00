"""Calibration data and gate metrics through the tasks' own preprocessing (OCR det/rec/cls, classification).

Calibration must see what the model sees in production, so data goes through the same preprocessing as
the task: page images -> det input; page images -> FP32 detection -> crops -> rec/cls input (the crops the
pipeline would really feed); classifier images -> the model's preprocess.yaml.

The OCR gate is the task metric: page character accuracy of the whole pipeline on a labelled folder, with
the candidate model swapped into its stage and the other stages at FP32.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ppdeploy.core.errors import InputError
from ppdeploy.precision.calibration import CalibrationSet, load_image
from ppdeploy.precision.gate import TaskMetric

OCR_ROLES = ("det", "rec", "cls")


def _rec_width(crop: np.ndarray, height: int, min_width: int) -> int:
    # A crop alone in its batch: as wide as its aspect ratio needs (PaddleOCR widens the batch, never squeezes).
    h, w = crop.shape[:2]
    return max(min_width, int(math.ceil(height * w / float(h))))


def ocr_preprocess(role: str, *, det_runner: Any = None, input_name: str = "x") -> Callable[[np.ndarray], Any]:
    """image (BGR) -> feeds for `role`. For rec/cls with a det runner, the image is a page and each detected
    crop becomes one sample; without one, the image is taken to be a text-line crop already."""
    from ppdeploy.tasks.ocr.cls import ClsOptions
    from ppdeploy.tasks.ocr.rec import RecOptions
    from ppdeploy.tasks.ocr.textline import fill_batch

    if role not in OCR_ROLES:
        raise InputError(f"unknown OCR stage '{role}'", hint=f"choose from {', '.join(OCR_ROLES)}")
    if role == "det":
        from ppdeploy.tasks.ocr.det import DetOptions, preprocess

        options = DetOptions()
        return lambda bgr: {input_name: preprocess(bgr, options)[0]}

    rec, cls = RecOptions(), ClsOptions()
    detector = None
    if det_runner is not None:
        from ppdeploy.tasks.ocr.det import TextDetector

        detector = TextDetector(det_runner)

    def line_feeds(crop: np.ndarray) -> dict[str, np.ndarray]:
        if role == "rec":
            return {input_name: fill_batch([crop], rec.image_height, _rec_width(crop, rec.image_height, rec.image_width))}
        return {input_name: fill_batch([crop], cls.image_height, cls.image_width)}

    def run(bgr: np.ndarray):
        if detector is None:
            return line_feeds(bgr)
        from ppdeploy.tasks.ocr.crop import crop_all

        boxes = detector(bgr).boxes
        return [line_feeds(c) for c in crop_all(bgr, boxes)] if len(boxes) else []

    return run


def ocr_calibration(role: str, folder: str | Path, *, det_runner: Any = None, limit: int | None = None,
                    input_name: str = "x") -> CalibrationSet:
    return CalibrationSet.from_images(folder, ocr_preprocess(role, det_runner=det_runner, input_name=input_name),
                                      limit=limit)


def ocr_char_accuracy(data_dir: str | Path, role: str, runners: Mapping[str, Any], **ocr_options: Any) -> TaskMetric:
    """TaskMetric: page character accuracy on the labelled folder with the candidate as `role`'s runner.

    `runners` holds the FP32 runners of the other stages ("det", "rec", optionally "cls").
    """
    from ppdeploy.tasks.ocr.evaluate import evaluate_ocr
    from ppdeploy.tasks.ocr.pipeline import OCR

    if role not in OCR_ROLES:
        raise InputError(f"unknown OCR stage '{role}'", hint=f"choose from {', '.join(OCR_ROLES)}")

    def metric(candidate: Any) -> float:
        stages = dict(runners)
        stages[role] = candidate
        ocr = OCR.from_runners(det=stages["det"], rec=stages["rec"], cls=stages.get("cls"), **ocr_options)
        return float(evaluate_ocr(ocr, data_dir).metrics.char_accuracy)

    metric.__name__ = f"ocr_char_accuracy[{role}]"
    metric.data_hash = folder_digest(data_dir)  # the precision cache key must change when the gate's pages do
    return metric


def folder_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of every file in `folder` (recursively), in sorted order."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ocr_load_kwargs(role: str, calib_dir: str | Path, *, runners: Mapping[str, Any], gate_data: str | Path | None = None,
                    quantizer: str = "onnxruntime", method: str = "entropy", limit: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `load_model(zoo model of role, precision="int8"|"fp16"|"bf16", **kwargs)` so an OCR
    stage is calibrated on the pipeline's own inputs and, with `gate_data` (labelled pages, not the calibration
    pages), gated on page character accuracy. `runners`: FP32 runners of the stages ("det", "rec", "cls")."""
    if gate_data is not None and Path(gate_data).resolve() == Path(calib_dir).resolve():
        raise InputError("the gate's pages must not be the calibration pages")
    calib = ocr_calibration(role, calib_dir, det_runner=None if role == "det" else runners["det"], limit=limit)
    options: dict[str, Any] = {"quantizer": quantizer, "method": method}
    if gate_data is not None:
        options.update(task_metric=ocr_char_accuracy(gate_data, role, runners),
                       task_name=f"ocr_char_accuracy[{Path(gate_data).resolve()}]")
    return {"calib": calib, "precision_options": options}


def classification_calibration(folder: str | Path, preprocess_yaml: str | Path | None = None, *,
                               limit: int | None = None, input_name: str = "x") -> CalibrationSet:
    from ppdeploy.tasks.classification.task import PreprocessConfig, preprocess_image

    cfg = PreprocessConfig.from_file(preprocess_yaml) if preprocess_yaml else PreprocessConfig()
    return CalibrationSet.from_images(folder, lambda bgr: {input_name: preprocess_image(bgr, cfg)[None]}, limit=limit)


def classification_accuracy(samples: CalibrationSet, labels: list[int]) -> TaskMetric:
    """TaskMetric for a labelled classification set: top-1 accuracy of the candidate (one label per sample)."""
    if len(labels) != len(samples):
        raise InputError(f"{len(labels)} labels for {len(samples)} samples")

    def metric(candidate: Any) -> float:
        hits = 0
        for feeds, label in zip(samples, labels):
            scores = next(iter(candidate.infer(feeds).values()))
            hits += int(int(scores.reshape(-1).argmax()) == int(label))
        return hits / len(labels)

    return metric


__all__ = ["ocr_preprocess", "ocr_calibration", "ocr_char_accuracy", "ocr_load_kwargs", "classification_calibration",
           "classification_accuracy", "load_image"]
