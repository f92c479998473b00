"""Classification calibration data (images through the model's preprocess.yaml) and the top-1 task metric."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ppdeploy.core.errors import InputError
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.classification.preprocess import PreprocessConfig, preprocess_image


def classification_calibration(folder: str | Path, preprocess_yaml: str | Path | None = None, *,
                               limit: int | None = None, input_name: str = "x") -> CalibrationSet:
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


__all__ = ["classification_accuracy", "classification_calibration"]
