"""Resize + normalize text-line crops into a padded batch, the way PaddleOCR's cls and rec predictors do."""
from __future__ import annotations

import math

import numpy as np

from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="opencv-python-headless")


def resized_width(crop: np.ndarray, height: int, max_width: int) -> int:
    h, w = crop.shape[:2]
    return min(max_width, int(math.ceil(height * (w / float(h)))))


def fill_batch(crops: list[np.ndarray], height: int, width: int, rows: int = 0) -> np.ndarray:
    """N crops -> Nx3xHxW float32: aspect-preserving resize to `height` (width capped at `width`),
    (x/255 - 0.5)/0.5, right side zero-padded. One allocation for the whole batch, of at least `rows` rows (the
    rows after the crops are zeros)."""
    batch = np.zeros((max(len(crops), rows), 3, height, width), dtype=np.float32)
    scale = np.float32(2.0 / 255.0)
    for i, crop in enumerate(crops):
        rw = max(1, resized_width(crop, height, width))
        resized = cv2.resize(crop, (rw, height))
        for c in range(3):
            plane = batch[i, c, :, :rw]
            np.multiply(resized[:, :, c], scale, out=plane, casting="unsafe")
            plane -= np.float32(1.0)
    return batch
