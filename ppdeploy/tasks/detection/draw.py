"""Boxes drawn on the image, for `ppdeploy detect --draw`."""
from __future__ import annotations

from pathlib import Path

from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.detection.result import DetectionResult
from ppdeploy.tasks.image_io import ImageInput, load_image

cv2 = lazy_import("cv2", install="pip install opencv-python-headless")


def draw_detections(image: ImageInput, result: DetectionResult, out: str | Path) -> Path:
    img = load_image(image).copy()
    thick = max(1, round(max(img.shape[:2]) / 500))
    for d in result.detections:
        color = tuple(int(c) for c in ((d.class_id * 67) % 200 + 55, (d.class_id * 131) % 200 + 55, 230))
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
        cv2.putText(img, f"{d.label} {d.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, color, thick)
    out = Path(out)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"cannot write {out}")
    return out


__all__ = ["draw_detections"]
