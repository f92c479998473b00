"""Run an OCR predictor over a folder (timed) and score it against labels: what `ppdeploy eval ocr` and
`ppdeploy bench ocr` build on. A predictor is any callable image path -> OCRResult (an OCR pipeline is one), so this
module depends on the result type, not on the pipeline."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.core.errors import InputError
from ppdeploy.tasks.ocr.dataset import LabelledImage, read_labelled_folder
from ppdeploy.tasks.ocr.metrics import OCRMetrics, score_dataset
from ppdeploy.tasks.ocr.result import OCRResult, mean_timings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


@dataclass
class FolderRun:
    paths: list[Path]
    results: list[OCRResult]  # one per path
    seconds: float  # wall time of all predict calls (decode included), after the warm-up
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per image

    @property
    def pages_per_s(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else 0.0


Predictor = Callable[[Path], OCRResult]


def run_ocr_folder(predict: Predictor, images: str | Path | Sequence[str | Path], *, warmup: int = 1,
                   repeat: int = 1) -> FolderRun:
    """Predict every image `repeat` times after `warmup` untimed predictions; returns results of the last pass
    and the mean per-stage milliseconds over all timed passes."""
    paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    for p in paths[:warmup]:
        predict(p)
    all_results = []
    start = time.perf_counter()
    for _ in range(max(1, repeat)):
        results = [predict(p) for p in paths]
        all_results += results
    seconds = time.perf_counter() - start
    return FolderRun(paths, results, seconds / max(1, repeat), mean_timings(all_results))


@dataclass
class OCREvaluation:
    metrics: OCRMetrics
    run: FolderRun
    labelled: list[LabelledImage]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics.to_dict(),
            "pages_per_s": round(self.run.pages_per_s, 3),
            "stage_ms": {k: round(v, 2) for k, v in self.run.stage_ms.items()},
        }


def evaluate_ocr(predict: Predictor, data_dir: str | Path, *, ignore_space: bool = True,
                 nfkc: bool = False) -> OCREvaluation:
    labelled = read_labelled_folder(data_dir)
    run = run_ocr_folder(predict, [item.path for item in labelled])
    preds = [[(line.text, line.box) for line in r.lines] for r in run.results]
    gts = [[(line.text, line.box) for line in item.lines] for item in labelled]
    return OCREvaluation(score_dataset(preds, gts, ignore_space=ignore_space, nfkc=nfkc), run, labelled)
