"""Text direction classifier (0 / 180 degrees), as PaddleOCR's `tools/infer/predict_cls.py`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.textline import fill_batch

cv2 = lazy_import("cv2", install="opencv-python-headless")


@dataclass(frozen=True)
class ClsOptions:
    """PaddleOCR's direction-classifier defaults."""

    thresh: float = 0.9
    """A crop is turned 180 degrees when the classifier says "180" with a score above this."""
    image_height: int = 48
    image_width: int = 192
    """Crops are resized to this height, width from the aspect ratio up to image_width, zero-padded."""
    batch_size: int = 6
    labels: tuple[str, ...] = ("0", "180")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"cls batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.thresh <= 1.0:
            raise ConfigError(f"cls thresh must be in [0, 1], got {self.thresh}")


class TextDirectionClassifier:
    def __init__(self, runner: Any, options: ClsOptions | None = None):
        self.runner = runner
        self.options = options or ClsOptions()
        self.input_name = runner.io.inputs[0].name
        # Every batch is sent with batch_size rows, the last one padded with zero rows (whose answers are dropped):
        # the same input shape on every call. OpenVINO re-plans a dynamic-shape model whenever the shape changes
        # (~0.5 ms for this small model), which cost more than the padded rows: 7.5 -> 5.1 ms of cls per page
        # measured (BF16, 2 threads). The rows are independent, so the answers are the same.
        fixed_batch = bool(runner.io.inputs[0].shape) and runner.io.inputs[0].shape[0] is not None
        self.pad_rows = 0 if fixed_batch else self.options.batch_size  # a fixed batch size is the model's to keep

    def __call__(self, crops: list[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[str, float]]]:
        """Returns the crops (the upside-down ones rotated) and (label, score) per crop."""
        opts = self.options
        crops = list(crops)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops], kind="stable")
        for start in range(0, len(crops), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            batch = fill_batch([crops[i] for i in idx], opts.image_height, opts.image_width, rows=self.pad_rows)
            probs = next(iter(self.runner.infer({self.input_name: batch}).values()))[:len(idx)]
            best = probs.argmax(axis=1)
            for row, i in enumerate(idx):
                label, score = opts.labels[int(best[row])], float(probs[row, best[row]])
                results[i] = (label, score)
                if "180" in label and score > opts.thresh:
                    crops[i] = cv2.rotate(crops[i], cv2.ROTATE_180)
        return crops, results
