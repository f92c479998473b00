"""What an OCR pipeline returns (`OCRResult`), kept apart from the pipeline so evaluation and reports depend on the
result type only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

TIMING_KEYS = ("decode", "det_pre", "det_infer", "det_post", "crop", "cls", "rec_pre", "rec_infer", "rec_post",
               "rec_guard", "total")


@dataclass
class OCRLine:
    text: str
    score: float
    box: list[list[int]]  # 4 [x, y] points, clockwise from top-left, in input-image pixels

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 5), "box": self.box}


@dataclass
class OCRResult:
    lines: list[OCRLine]
    timings: dict[str, float]  # milliseconds per stage, see TIMING_KEYS
    width: int
    height: int
    guarded_lines: int = 0  # lines the rec guard read again at full precision (ppdeploy.tasks.ocr.guard)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "lines": [line.to_dict() for line in self.lines],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "guarded_lines": self.guarded_lines,
        }


def mean_timings(results: Iterable[OCRResult]) -> dict[str, float]:
    """Average milliseconds per stage over results (what `ppdeploy bench ocr` reports per backend)."""
    results = list(results)
    if not results:
        return dict.fromkeys(TIMING_KEYS, 0.0)
    return {k: float(np.mean([r.timings.get(k, 0.0) for r in results])) for k in TIMING_KEYS}


__all__ = ["OCRLine", "OCRResult", "TIMING_KEYS", "mean_timings"]
