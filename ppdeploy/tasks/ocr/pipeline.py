"""PP-OCR end to end: decode -> detect (DB) -> crop -> direction classifier -> recognize (CTC).

The pipeline only sees runner-like objects (`.io`, `.infer(dict) -> dict`); `OCR(...)` builds them with
`ppdeploy.deploy.load.load_model` for the bundled PP-OCR models, `OCR.from_runners(...)` takes any you already have
(the HTTP server passes runners whose `infer` goes through its dynamic batcher).

Options (keyword arguments of `OCR` and `OCR.from_runners`; defaults are PaddleOCR's PP-OCRv4 ones):
  det_limit_side_len=960, det_limit_type="max", det_thresh=0.3, det_box_thresh=0.6, det_unclip_ratio=1.5,
  det_use_dilation=False, det_score_mode="fast", det_max_candidates=1000, det_min_size=3,
  det_mean=(0.485, 0.456, 0.406), det_std=(0.229, 0.224, 0.225),
  cls_thresh=0.9, cls_batch_size=6, cls_image_height=48, cls_image_width=192,
  rec_batch_size=6, rec_image_height=48, rec_image_width=320, rec_dictionary=None, rec_use_space_char=True,
  drop_score=0.5 (lines whose recognition score is below it are dropped), max_pixels=100e6 (input limit).
See DetOptions / ClsOptions / RecOptions for what each does.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.tasks.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image
from ppdeploy.tasks.ocr.cls import ClsOptions, TextDirectionClassifier
from ppdeploy.tasks.ocr.crop import crop_all
from ppdeploy.tasks.ocr.det import DetOptions, TextDetector
from ppdeploy.tasks.ocr.guard import GuardedRecRunner
from ppdeploy.tasks.ocr.rec import RecOptions, TextRecognizer

STAGES = ("det", "cls", "rec")
DEFAULT_MODELS = {"det": "ppocrv4-det", "cls": "ppocr-cls", "rec": "ppocrv4-rec"}
TIMING_KEYS = ("decode", "det_pre", "det_infer", "det_post", "crop", "cls", "rec_pre", "rec_infer", "rec_post",
               "rec_guard", "total")
# Stage precisions that keep a region in FP32 by default (OCR's keep_fp32="auto"; ppdeploy.graph.regions): BF16 det
# moved boxes enough to change 3 % of lines, BF16 det with its encoder in FP32 0.3 % (measured in regions.py).
AUTO_KEEP_FP32 = {"det": {"bf16": ("encoder",)}}
# Rec precisions that get the FP32 guard by default: their errors are small enough for the guard to find the lines
# they change. INT8's are not (ppdeploy/tasks/ocr/guard.py has the numbers); rec_guard="fp32" still forces it.
GUARDED_PRECISIONS = ("bf16", "fp16")


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


def _per_stage(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(STAGES) - {"default"}
        if unknown:
            raise ConfigError(f"{what} given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}"
                              " (and 'default' for the others)")
        default = value.get("default")
        return {s: value.get(s, default) for s in STAGES}
    return {s: value for s in STAGES}


def _per_stage_mapping(load_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    load_options = load_options or {}
    unknown = set(load_options) - set(STAGES)
    if unknown:
        raise ConfigError(f"load_options given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    return {s: dict(load_options.get(s, {})) for s in STAGES}


# Per-stage onnxruntime-cuda switches (see OCR's gpu_shape_buckets): det pages padded to multiples of 960 (a page's
# long side is <= 960 by default), rec widths to multiples of 320; batch dims are bucketed by the backend itself.
GPU_SHAPE_BUCKETS = {
    "det": {"pad_multiple": {"x": {"2": 960, "3": 960}}},
    "rec": {"pad_multiple": {"x": {"3": 320}}, "max_cached_shapes": 24},
    "cls": {"max_cached_shapes": 16},
}


class OCR:
    """PP-OCR pipeline. `OCR(backend="auto").predict("page.png")` -> OCRResult.

    backend / precision: one name for all stages, or a dict per stage, e.g.
    `backend={"det": "openvino", "rec": "onnxruntime", "cls": "onnxruntime"}`; stages left out get the
    dict's "default" entry, else "auto" / "fp32".
    load_options: extra `load_model` arguments per stage, e.g. {"rec": {"max_loss": 0.01}}.
    calib: a folder of page images for the stages in int8 (or another reduced precision): each stage is calibrated on
    what the pipeline feeds it (det: the pages; cls/rec: the crops an FP32 detector finds on them). gate_data: a
    folder of labelled pages (not the calibration ones) on which those stages are gated by the page character
    accuracy of the whole pipeline; without it, each model is gated on its own outputs.
    gpu_shape_buckets: when a stage lands on onnxruntime-cuda, pad its inputs into a few shape buckets. ORT's CUDA
    provider re-plans every convolution on a shape change (60-680 ms on the H100), and OCR sends a new shape on
    almost every call: measured there, 0.3 pages/s without buckets, 16.6 with (bench/gpu/README.md). Zero padding
    is what PaddleOCR's own batching does to shorter crops; CPU backends are unaffected.
    rec_guard: "auto" (default) loads an FP32 copy of the rec model on the same backend whenever rec runs in a
    reduced precision whose errors it can catch (bf16, fp16) and re-reads with it the lines the fast model is unsure of
    (ppdeploy.tasks.ocr.guard; threshold rec_guard_margin); a precision name ("fp32") forces that guard, None
    turns it off.
    keep_fp32: what stays FP32 in a reduced-precision stage (ppdeploy.graph.regions). "auto" (default): the
    detector's encoder when det runs BF16, which keeps its boxes where FP32 puts them (3 % of lines changed by pure
    BF16 det, 0.3 % with the encoder in FP32, for 27.5 -> 20.5 ms of det per page instead of 16.2). A dict per stage
    ({"det": ["encoder"]}, also for FP16) sets it; None turns it off.
    rec_head: "auto" (default) appends the ctc_greedy head (ppdeploy.graph.heads) to an unguarded FP32/FP16 rec
    graph on a GPU backend: the engine returns the best class and its probability per step instead of the whole
    softmax (2.1 MB per line to copy back), the same text and scores. On the CPU it does not pay: OpenVINO's
    in-graph argmax over 6625 classes costs more than numpy's (+14 % rec time measured), ONNX Runtime's the same.
    "ctc_greedy" asks for it anywhere, None keeps the softmax. Never with a guard (it needs the runner-up classes),
    nor on Paddle Inference; "auto" also leaves BF16/INT8 alone, whose in-engine argmax could break ties
    differently from the FP32 softmax the host would see.
    """

    def __init__(self, backend: str | Mapping[str, str] = "auto", precision: str | Mapping[str, str] = "fp32",
                 det_model: Any = DEFAULT_MODELS["det"], rec_model: Any = DEFAULT_MODELS["rec"],
                 cls_model: Any = DEFAULT_MODELS["cls"], use_cls: bool = True, threads: int | None = None,
                 load_options: Mapping[str, Mapping[str, Any]] | None = None, gpu_shape_buckets: bool = True,
                 rec_guard: str | None = "auto", calib: Any = None, gate_data: Any = None,
                 rec_head: str | None = "auto", keep_fp32: str | Mapping[str, Any] | None = "auto", **options: Any):
        from ppdeploy.deploy.load import load_model

        opts = OCROptions.from_kwargs(**options)  # validate before spending time on engines
        backends = _per_stage(backend, "backend")
        precisions = _per_stage(precision, "precision")
        models = {"det": det_model, "rec": rec_model, "cls": cls_model}
        extra = _per_stage_mapping(load_options)
        if gpu_shape_buckets:
            for stage, buckets in GPU_SHAPE_BUCKETS.items():
                switches = dict(extra[stage].get("extra") or {})
                switches.setdefault("onnxruntime-cuda", buckets)
                extra[stage]["extra"] = switches
        stages = [s for s in STAGES if s != "cls" or use_cls]
        keeps = keep_fp32_for(keep_fp32, precisions)
        guard_precision = rec_guard_precision(rec_guard, precisions["rec"] or "fp32")
        head = rec_head_for(rec_head, backends["rec"] or "auto", precisions["rec"] or "fp32", guard_precision)
        refs = _calibrate_from_pages(stages, calib, gate_data, models, backends, precisions, extra, threads) \
            if calib is not None else {}
        for stage, keep in keeps.items():  # after the calibration, which sets precision_options of its own
            options_for_precision = dict(extra[stage].get("precision_options") or {})
            options_for_precision.setdefault("keep_fp32", keep)  # explicit load_options win
            extra[stage]["precision_options"] = options_for_precision
        self.deployments: dict[str, Any] = {}
        try:
            for stage in stages:
                heads = {"head": head} if stage == "rec" and head else {}
                self.deployments[stage] = load_model(models[stage], backend=backends[stage] or "auto",
                                                     precision=precisions[stage] or "fp32", threads=threads,
                                                     **{**heads, **extra[stage]})
            if guard_precision is not None:
                # Same backend as the fast model, so the guard differs from it in precision only.
                self.deployments["rec_guard"] = load_model(models["rec"], backend=self.deployments["rec"].backend,
                                                           precision=guard_precision, threads=threads, **extra["rec"])
        except BaseException:
            self.close()  # the stages loaded before the failure
            raise
        finally:
            for d in refs.values():  # the calibration's FP32 references: the gates have run
                d.close()
        runners = {s: d.runner for s, d in self.deployments.items()}
        self._init(runners["det"], runners["rec"], runners.get("cls"), opts, runners.get("rec_guard"))

    @classmethod
    def from_runners(klass, det: Any, rec: Any, cls: Any = None, *, use_cls: bool = True,
                     options: OCROptions | None = None, rec_guard: Any = None, **kwargs: Any) -> "OCR":
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
        det = self.detector(bgr)
        timings.update(det.timings)
        lines: list[OCRLine] = []
        guarded = 0
        if len(det.boxes):
            t = time.perf_counter()
            crops = crop_all(bgr, det.boxes)
            timings["crop"] = (time.perf_counter() - t) * 1e3
            if self.classifier is not None:
                t = time.perf_counter()
                crops, _ = self.classifier(crops)
                timings["cls"] = (time.perf_counter() - t) * 1e3
            texts, rec_timings = self.recognizer(crops)
            guarded = rec_timings.guard_lines
            timings.update({k: v for k, v in dataclasses.asdict(rec_timings).items() if k in timings})
            for box, (text, score) in zip(det.boxes, texts):
                if score >= self.options.drop_score:
                    lines.append(OCRLine(text, score, box.astype(np.int32).tolist()))
        timings["total"] = (time.perf_counter() - start) * 1e3
        return OCRResult(lines, timings, width=int(bgr.shape[1]), height=int(bgr.shape[0]), guarded_lines=guarded)

    __call__ = predict

    def predict_many(self, images: Iterable[ImageInput]) -> list[OCRResult]:
        return [self.predict(img) for img in images]

    def close(self) -> None:
        for dep in self.deployments.values():
            dep.runner.close()
        self.deployments = {}

    def __enter__(self) -> "OCR":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _calibrate_from_pages(stages, calib, gate_data, models, backends, precisions, extra, threads) -> dict[str, Any]:
    """Put calibration (and the task gate) built from page images into `extra` for every reduced-precision stage.
    Returns the FP32 reference deployments the gates use; the caller closes them once the stages are loaded."""
    from ppdeploy.deploy.load import load_model
    from ppdeploy.backends.openvino import quantize as int8_openvino
    from ppdeploy.tasks.ocr.calibrate import ocr_load_kwargs
    from ppdeploy.deploy.select import first_runnable

    lowered = [s for s in stages if (precisions[s] or "fp32") != "fp32"]
    if not lowered:
        return {}
    # FP32 reference runners: the detector finds the crops rec/cls see; all three run the task gate.
    refs = {s: load_model(models[s], backend="onnxruntime", threads=threads) for s in stages}
    try:
        runners = {s: d.runner for s, d in refs.items()}
        for s in lowered:
            # Quantize for the backend that will run the stage: "auto" on a CPU machine is OpenVINO, where NNCF's IR
            # is the fast INT8 (a QDQ graph runs slower than FP32 there).
            nncf = first_runnable(backends[s] or "auto") == "openvino" and int8_openvino.available() is None
            kwargs = ocr_load_kwargs(s, calib, runners=runners, gate_data=gate_data,
                                     quantizer="openvino" if nncf else "onnxruntime",
                                     method="minmax" if nncf else "entropy")
            extra[s] = {**kwargs, **extra[s]}  # explicit load_options win
    except BaseException:
        for d in refs.values():
            d.close()
        raise
    return refs


def keep_fp32_for(keep_fp32: str | Mapping[str, Any] | None,
                  precisions: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Stage -> regions kept FP32, for OCR(keep_fp32=...) with these stage precisions."""
    if keep_fp32 is None or keep_fp32 in ("off", "none"):
        return {}
    if keep_fp32 == "auto":
        auto = {s: AUTO_KEEP_FP32.get(s, {}).get(precisions.get(s) or "fp32") for s in STAGES}
        return {s: list(keep) for s, keep in auto.items() if keep}
    if not isinstance(keep_fp32, Mapping):
        raise ConfigError(f"keep_fp32={keep_fp32!r}: give 'auto', None, or a dict per stage such as "
                          "{'det': ['encoder']}")
    unknown = set(keep_fp32) - set(STAGES)
    if unknown:
        raise ConfigError(f"keep_fp32 given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    out = {}
    for stage, keep in keep_fp32.items():
        keep = [keep] if isinstance(keep, str) else list(keep or ())
        if keep and (precisions.get(stage) or "fp32") in ("fp32", "int8"):
            raise ConfigError(f"keep_fp32 for {stage}: its precision is {precisions.get(stage) or 'fp32'}; "
                              "keep_fp32 is for bf16 and fp16 stages")
        if keep:
            out[stage] = keep
    return out


def rec_guard_precision(rec_guard: str | None, rec_precision: str) -> str | None:
    """The precision of the guard model OCR(rec_guard=...) loads for a rec model of `rec_precision` (None: no guard)."""
    if rec_guard is None or rec_guard in ("off", "none"):
        return None
    if rec_guard == "auto":
        return "fp32" if rec_precision in GUARDED_PRECISIONS else None
    if rec_guard == rec_precision:
        raise ConfigError(f"rec_guard={rec_guard!r} is the rec model's own precision; a guard must be more precise")
    return rec_guard


def rec_head_for(rec_head: str | None, backend: str, precision: str, guard_precision: str | None) -> str | None:
    """The output head OCR(rec_head=...) appends to the rec graph (None: the model's own softmax)."""
    from ppdeploy.graph.heads import CTC_GREEDY, check_head

    if rec_head is None or rec_head in ("off", "none", "softmax"):
        return None
    if rec_head == "auto":
        if guard_precision is not None or precision not in ("fp32", "fp16"):
            return None
        from ppdeploy.backends import get_backend
        from ppdeploy.deploy.select import first_runnable

        first = first_runnable(backend)
        return CTC_GREEDY if first is not None and get_backend(first).device == "gpu" else None
    check_head(rec_head)
    if guard_precision is not None:
        raise ConfigError(f"rec_head={rec_head!r} leaves only the best class per step, and the rec guard needs the "
                          "runner-up classes", hint="pass rec_guard=None, or rec_head=None")
    return rec_head


def mean_timings(results: Iterable[OCRResult]) -> dict[str, float]:
    """Average milliseconds per stage over results (what `ppdeploy bench ocr` reports per backend)."""
    results = list(results)
    if not results:
        return dict.fromkeys(TIMING_KEYS, 0.0)
    return {k: float(np.mean([r.timings.get(k, 0.0) for r in results])) for k in TIMING_KEYS}
