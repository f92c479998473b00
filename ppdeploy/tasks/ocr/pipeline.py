"""The PP-OCR pipeline on runners: decode -> detect (DB) -> crop -> direction classifier -> recognize (CTC).

`OCRPipeline` only runs runner-like objects (`.io`, `.infer(dict) -> dict`) it is handed: the rec guard, the
timings and the OCR task contract (ppdeploy.tasks.base.Task). Loading models, and choosing each stage's backend,
precision, guard and output head, is `ppdeploy.tasks.ocr.builder.OCR`'s job.

Options (keyword arguments of `OCR` and `OCRPipeline.from_runners`; defaults are PaddleOCR's PP-OCRv4 ones):
  det_limit_side_len=960, det_limit_type="max", det_thresh=0.3, det_box_thresh=0.6, det_unclip_ratio=1.5,
  det_use_dilation=False, det_score_mode="fast", det_max_candidates=1000, det_min_size=3,
  det_mean=(0.485, 0.456, 0.406), det_std=(0.229, 0.224, 0.225),
  det_adaptive=True, det_adaptive_min_px=24, det_adaptive_max_px=40, det_adaptive_max_side=4096,
  det_adaptive_passes=2 (ppdeploy's own: a page whose text is too small or too big for the detector is detected
  again at a better scale; det_adaptive=False is PaddleOCR's single pass),
  cls_thresh=0.9, cls_batch_size=6, cls_image_height=48, cls_image_width=192,
  rec_batch_size=6, rec_image_height=48, rec_image_width=320, rec_dictionary=None, rec_use_space_char=True,
  drop_score=0.5 (lines whose recognition score is below it are dropped), max_pixels=100e6 (input limit).
See DetOptions / ClsOptions / RecOptions for what each does.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.base import Task, TaskContext
from ppdeploy.tasks.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image
from ppdeploy.tasks.ocr.calibrate import ocr_calibration, ocr_char_accuracy
from ppdeploy.tasks.ocr.cls import ClsOptions, TextDirectionClassifier
from ppdeploy.tasks.ocr.crop import crop_all
from ppdeploy.tasks.ocr.det import DetOptions, TextDetector
from ppdeploy.tasks.ocr.guard import GuardedRecRunner
from ppdeploy.tasks.ocr.rec import RecOptions, TextRecognizer
from ppdeploy.tasks.ocr.result import TIMING_KEYS, OCRLine, OCRResult
from ppdeploy.tasks.ocr.synth import SynthOptions, generate
from ppdeploy.tasks.ocr.throughput import (
    DEFAULT_INFLIGHT,
    PageOutcome,
    ThroughputExecutor,
)

STAGES = ("det", "cls", "rec")
DEFAULT_MODELS = {"det": "ppocrv4-det", "cls": "ppocr-cls", "rec": "ppocrv4-rec"}


@dataclass(frozen=True)
class OCROptions:
    det: DetOptions = field(default_factory=DetOptions)
    cls: ClsOptions = field(default_factory=ClsOptions)
    rec: RecOptions = field(default_factory=RecOptions)
    drop_score: float = 0.5
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_kwargs(cls, **options: Any) -> "OCROptions":
        """Flat PaddleOCR-style names (det_thresh=..., rec_batch_size=...) -> nested options."""
        groups: dict[str, dict[str, Any]] = {"det": {}, "cls": {}, "rec": {}}
        top: dict[str, Any] = {}
        valid = sorted(option_names())
        for key, value in options.items():
            if value is None:
                continue  # "not given" (the CLI passes None for flags left out)
            prefix, _, rest = key.partition("_")
            if prefix in groups and rest in {f.name for f in dataclasses.fields(_GROUP_TYPES[prefix])}:
                if rest in ("mean", "std", "labels"):
                    value = tuple(value)
                groups[prefix][rest] = value
            elif key in ("drop_score", "max_pixels"):
                top[key] = value
            else:
                raise ConfigError(f"unknown OCR option {key!r}", hint=f"valid options: {', '.join(valid)}")
        return cls(det=DetOptions(**groups["det"]), cls=ClsOptions(**groups["cls"]), rec=RecOptions(**groups["rec"]),
                   **top)


_GROUP_TYPES = {"det": DetOptions, "cls": ClsOptions, "rec": RecOptions}


def option_names() -> list[str]:
    names = [f"{p}_{f.name}" for p, t in _GROUP_TYPES.items() for f in dataclasses.fields(t)]
    return names + ["drop_score", "max_pixels"]


class OCRPipeline(Task):
    """PP-OCR on runners you hold: `OCRPipeline.from_runners(det=..., rec=..., cls=...).predict("page.png")`.

    As a Task (registered as "ocr", served at /v1/ocr): its roles are other models of the repository (det, rec,
    optional cls, optional rec_guard: a full-precision rec that re-reads the lines a reduced-precision rec is unsure
    of, ppdeploy.tasks.ocr.guard).
    """

    name = "ocr"
    route = "ocr"
    roles = ("det", "cls", "rec", "rec_guard")
    required_roles = ("det", "rec")
    default_models = DEFAULT_MODELS
    composite = True
    head_role = "rec"
    calibration_needs = {"rec": ("det",), "cls": ("det",)}

    @classmethod
    def from_runners(klass, det: Any, rec: Any, cls: Any = None, *, use_cls: bool = True,
                     options: OCROptions | None = None, rec_guard: Any = None, **kwargs: Any) -> "OCRPipeline":
        """Build the pipeline on runner-like objects you already hold (no model loading).
        cls=None or use_cls=False skips the direction classifier; rec_guard is an optional full-precision rec runner
        (see OCR); kwargs are the same options as OCR(...)."""
        self = klass.__new__(klass)
        self.deployments = {}
        self._init(det, rec, cls if use_cls else None, options or OCROptions.from_kwargs(**kwargs), rec_guard)
        return self

    def _init(self, det: Any, rec: Any, cls_runner: Any, options: OCROptions, rec_guard: Any = None) -> None:
        self.options = options
        self.detector = TextDetector(det, options.det)
        self.classifier = TextDirectionClassifier(cls_runner, options.cls) if cls_runner is not None else None
        if rec_guard is not None and options.rec.guard_margin > 0:
            rec = GuardedRecRunner(rec, rec_guard, options.rec.guard_margin)
        self.recognizer = TextRecognizer(rec, options.rec)

    @property
    def guarded(self) -> bool:
        """Whether rec runs with a full-precision guard (see ppdeploy.tasks.ocr.guard)."""
        return isinstance(self.recognizer.runner, GuardedRecRunner)

    @property
    def backends(self) -> dict[str, str]:
        """Stage -> backend that runs it ("?" for runners handed in without a backend name)."""
        rec = self.recognizer.runner
        runners = {"det": self.detector.runner, "rec": rec.fast if isinstance(rec, GuardedRecRunner) else rec}
        if self.classifier is not None:
            runners["cls"] = self.classifier.runner
        return {s: getattr(r, "backend", "?") for s, r in runners.items()}

    def predict(self, image: ImageInput) -> OCRResult:
        t0 = time.perf_counter()
        bgr = load_image(image, max_pixels=self.options.max_pixels)
        t1 = time.perf_counter()
        result = self.predict_bgr(bgr)
        result.timings["decode"] = (t1 - t0) * 1e3
        result.timings["total"] += result.timings["decode"]
        return result

    def predict_bgr(self, bgr: np.ndarray) -> OCRResult:
        """The pipeline on an already-decoded HxWx3 BGR uint8 image (no decode timing)."""
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        start = time.perf_counter()
        boxes, crops = self.detect_and_crop(bgr, timings)
        texts: list[tuple[str, float]] = []
        guarded = 0
        if crops:
            texts, rec_timings = self.recognizer(crops)
            guarded = rec_timings.guard_lines
            timings.update({k: v for k, v in dataclasses.asdict(rec_timings).items() if k in timings})
        lines = self.lines_of(boxes, texts)
        timings["total"] = (time.perf_counter() - start) * 1e3
        return OCRResult(lines, timings, width=int(bgr.shape[1]), height=int(bgr.shape[0]), guarded_lines=guarded)

    def detect_and_crop(self, bgr: np.ndarray, timings: dict[str, float]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The stages before rec: det, then each box cut out (and turned upright by cls). Returns the boxes (reading
        order) and their crops; adds det_pre/det_infer/det_post/crop/cls milliseconds to `timings`. The throughput
        mode (ppdeploy.tasks.ocr.throughput) runs this and `lines_of` as `predict_bgr` does, so both read alike."""
        det = self.detector(bgr)
        timings.update(det.timings)
        if not len(det.boxes):
            return det.boxes, []
        t = time.perf_counter()
        crops = crop_all(bgr, det.boxes)
        timings["crop"] = (time.perf_counter() - t) * 1e3
        if self.classifier is not None:
            t = time.perf_counter()
            crops, _ = self.classifier(crops)
            timings["cls"] = (time.perf_counter() - t) * 1e3
        return det.boxes, crops

    def lines_of(self, boxes: np.ndarray, texts: Sequence[tuple[str, float]]) -> list[OCRLine]:
        """The page's lines: each box with its (text, score), those scored below drop_score left out."""
        return [OCRLine(text, score, box.astype(np.int32).tolist())
                for box, (text, score) in zip(boxes, texts) if score >= self.options.drop_score]

    __call__ = predict

    def predict_many(self, images: Iterable[ImageInput], *, inflight: int = DEFAULT_INFLIGHT) -> list[OCRResult]:
        """`predict` on each image, in order, in throughput mode (see `iter_predict`); the first page that fails
        raises its error (`iter_predict` reports it and goes on)."""
        results = []
        for outcome in self.iter_predict(images, inflight=inflight):
            if outcome.error is not None:
                raise outcome.error
            results.append(outcome.result)
        return results

    def iter_predict(self, images: Iterable[ImageInput], *, inflight: int = DEFAULT_INFLIGHT) -> Iterator[PageOutcome]:
        """One PageOutcome (result, or the error that page met) per image, in input order, each as soon as it is
        ready. With inflight > 1, up to that many pages go through the stages at once and rec batches of equal width
        are shared between pages (ppdeploy.tasks.ocr.throughput): the same lines as `predict`, more pages per
        second; inflight=1 reads one page at a time in the calling thread."""
        if inflight > 1:
            yield from ThroughputExecutor(self, inflight=inflight).run(images)
            return
        for index, image in enumerate(images):
            try:
                yield PageOutcome(index, image, self.predict(image))
            except Exception as exc:  # this page's: the others go on
                yield PageOutcome(index, image, error=exc)

    def close(self) -> None:
        for dep in self.deployments.values():
            dep.runner.close()
        self.deployments = {}

    def __enter__(self) -> "OCRPipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the Task contract ---------------------------------------------------------------------------------------
    @classmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> "OCRPipeline":
        options = dict(options)
        if context.max_pixels is not None:
            options.setdefault("max_pixels", context.max_pixels)
        return cls.from_runners(det=runners["det"], rec=runners["rec"], cls=runners.get("cls"),
                                use_cls=runners.get("cls") is not None, rec_guard=runners.get("rec_guard"), **options)

    def execute(self, inputs: Sequence[ImageInput]) -> list[OCRResult]:
        return [self.predict(inputs[0])] if len(inputs) == 1 else self.predict_many(inputs)

    def finalize(self) -> None:
        self.close()

    @classmethod
    def calibration(cls, role: str, folder: str | Path, *, runners: Mapping[str, Any] | None = None,
                    limit: int | None = None, input_name: str = "x", model: str | Path | None = None) -> CalibrationSet:
        """Pages through the pipeline's preprocessing: det gets the pages; rec/cls the crops `runners["det"]` finds
        on them (without a det runner, the images are text-line crops already)."""
        det = None if role == "det" else (runners or {}).get("det")
        return ocr_calibration(role, folder, det_runner=det, limit=limit, input_name=input_name)

    @classmethod
    def metric(cls, role: str, data: str | Path, runners: Mapping[str, Any], **options: Any) -> TaskMetric:
        """Page character accuracy on the labelled folder `data`, the candidate as `role` and `runners` (FP32) for
        the other stages."""
        return ocr_char_accuracy(data, role, runners, cls.from_runners, **options)

    @classmethod
    def synthetic_data(cls, folder: Path, count: int, seed: int) -> Path | None:
        """Labelled synthetic pages (ppdeploy.tasks.ocr.synth); FontMissing (a PPDeployError) without a CJK font."""
        if not (folder / "labels.json").is_file():
            generate(folder, SynthOptions(pages=count, seed=seed))
        return folder


__all__ = ["DEFAULT_MODELS", "OCROptions", "OCRPipeline", "STAGES", "option_names"]
