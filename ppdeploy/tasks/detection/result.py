"""What a detector returns: per image, detections (class id, label, score, box in original image pixels)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels

    def to_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "label": self.label, "score": round(self.score, 6),
                "box": [round(v, 2) for v in self.box]}


@dataclass
class DetectionResult:
    detections: list[Detection]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # preprocess, infer, postprocess, total: ms per image

    def __len__(self) -> int:
        return len(self.detections)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class ids K, scores K, boxes Kx4)."""
        d = self.detections
        return (np.array([x.class_id for x in d], np.int64), np.array([x.score for x in d], np.float32),
                np.array([x.box for x in d], np.float32).reshape(-1, 4))

    def to_dict(self) -> dict[str, Any]:
        return {"detections": [d.to_dict() for d in self.detections], "width": self.width, "height": self.height,
                "timings_ms": {k: round(v, 3) for k, v in self.timings.items()}}


__all__ = ["Detection", "DetectionResult"]
