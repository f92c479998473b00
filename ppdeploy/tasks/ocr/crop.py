"""Cut each detected quadrilateral out of the page as an upright, axis-aligned text-line image."""
from __future__ import annotations

import numpy as np

from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="opencv-python-headless")


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective-warp `quad` (4x2, clockwise from top-left) to a rectangle, as PaddleOCR's get_rotate_crop_image.

    The output size is the longer of each pair of opposite edges; crops at least 1.5x taller than wide are
    rotated 90 degrees counter-clockwise, because vertical text lines are read after that rotation.
    """
    pts = quad.astype(np.float32)
    width = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    height = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if crop.shape[0] / crop.shape[1] >= 1.5:
        crop = np.rot90(crop)
    return crop


def crop_all(image: np.ndarray, quads: np.ndarray) -> list[np.ndarray]:
    return [crop_quad(image, q) for q in quads]
