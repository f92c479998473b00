"""Object detection on runners: decode -> preprocess (infer_cfg.yml or options) -> runner -> NMS rows or host NMS
-> class, label, score, box in original image pixels.

`Detector.from_runner(runner, ...)` runs a runner you hold; `Detector(model, backend=..., precision=...)` loads one
with ppdeploy.deploy.load_model (a zoo name such as "layout-cdla", a Paddle model folder, or an .onnx file). The
output layout (NMS in the graph, PicoDet raw heads, decoded boxes + scores) is read from the runner's outputs when
the detector is built, so a model that is not a detector fails there, not on the first image.

Options (keyword arguments, or the repository config's task options): infer_cfg (a PaddleDetection infer_cfg.yml;
found next to the model when not given), input_size (h, w), keep_ratio, interp, mean, std, scale, to_rgb,
pad_stride, labels (list or file), score_threshold, iou_threshold, nms_top_k, keep_top_k, strides, batch_size,
max_pixels. Explicit options win over infer_cfg.yml, which wins over the defaults.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.backends.registry import BACKENDS
from ppdeploy.core.errors import ConfigError, InputError, PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.select import chain_for, first_runnable
from ppdeploy.graph import heads
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.source import wheel_models as zoo
from ppdeploy.source.model import detect as detect_source
from ppdeploy.tasks.base import Task, TaskContext
from ppdeploy.tasks.detection.calibrate import (
    detection_calibration,
    detection_map_metric,
)
from ppdeploy.tasks.detection.postprocess import (
    HeadLayout,
    NMSOptions,
    decode_raw,
    host_nms,
    inspect_outputs,
    split_nms_rows,
)
from ppdeploy.tasks.detection.preprocess import (
    INFER_CFG,
    Preprocess,
    preprocess_batch,
    read_infer_cfg,
)
from ppdeploy.tasks.detection.result import Detection, DetectionResult
from ppdeploy.tasks.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image

onnx = lazy_import("onnx", install="pip install onnx")

LABELS_FILE = "labels.txt"
DEFAULT_MODEL = zoo.LAYOUT_CDLA.name
EVAL_SCORE_THRESHOLD = 0.05  # mAP counts low-score detections too: COCO evaluations keep them


@dataclass(frozen=True)
class DetectorOptions:
    preprocess: Preprocess = Preprocess()
    nms: NMSOptions = NMSOptions()
    labels: tuple[str, ...] = ()
    strides: tuple[int, ...] | None = None
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def build(cls, infer_cfg: str | Path | None = None, **options: Any) -> DetectorOptions:
        """infer_cfg.yml (when given) under the keyword options; unknown keywords are a ConfigError."""
        pre, nms, top = Preprocess(), NMSOptions(), {}
        if infer_cfg is not None:
            doc = read_infer_cfg(infer_cfg)
            pre = Preprocess.from_ops(doc["Preprocess"], where=str(infer_cfg))
            cfg_nms = doc.get("NMS") or {}
            nms = NMSOptions(score_threshold=float(doc.get("draw_threshold", nms.score_threshold)),
                             iou_threshold=float(cfg_nms.get("nms_threshold", nms.iou_threshold)),
                             nms_top_k=int(cfg_nms.get("nms_top_k", nms.nms_top_k)),
                             keep_top_k=int(cfg_nms.get("keep_top_k", nms.keep_top_k)))
            if doc.get("label_list"):
                top["labels"] = tuple(str(x) for x in doc["label_list"])
            if doc.get("fpn_stride"):
                top["strides"] = tuple(int(s) for s in doc["fpn_stride"])
        pre_fields = {"keep_ratio", "interp", "scale", "to_rgb", "pad_stride"}
        nms_fields = {f.name for f in dataclasses.fields(NMSOptions)}
        for key, value in options.items():
            if value is None:
                continue
            if key == "input_size":
                pre = dataclasses.replace(pre, size=(int(value[0]), int(value[1])))
            elif key in ("mean", "std"):
                pre = dataclasses.replace(pre, **{key: tuple(float(v) for v in value)})
            elif key in pre_fields:
                pre = dataclasses.replace(pre, **{key: value})
            elif key in nms_fields:
                nms = dataclasses.replace(nms, **{key: value})
            elif key == "labels":
                top["labels"] = _read_labels(value)
            elif key == "strides":
                top["strides"] = tuple(int(s) for s in value)
            elif key in ("batch_size", "max_pixels"):
                top[key] = int(value)
            elif key == "labels_key":
                continue  # read by the model loader (ONNX metadata)
            else:
                raise ConfigError(f"unknown detector option {key!r}", hint=f"valid options: {', '.join(option_names())}")
        return cls(preprocess=pre, nms=nms, **top)


def option_names() -> list[str]:
    return ["infer_cfg", "input_size", "keep_ratio", "interp", "mean", "std", "scale", "to_rgb", "pad_stride",
            "labels", "labels_key", "strides", "batch_size", "max_pixels",
            *[f.name for f in dataclasses.fields(NMSOptions)]]


def _read_labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, Path)):
        try:
            return tuple(x.strip() for x in Path(value).read_text(encoding="utf-8").splitlines() if x.strip())
        except OSError as exc:
            raise ConfigError(f"cannot read labels file {value}: {exc}") from exc
    return tuple(str(x) for x in value)


def model_side_options(model: Any) -> dict[str, Any]:
    """Options a model carries with it: a zoo preset, infer_cfg.yml / labels.txt beside it, ONNX metadata labels."""
    out: dict[str, Any] = {}
    path: Path | None = None
    if isinstance(model, str) and model in zoo.DETECTION:
        out.update(zoo.DETECTION[model].preset)
        path = zoo.model_path(model)
    elif isinstance(model, (str, Path)):
        path = Path(model)
    if path is None:
        return out
    if path.is_dir():
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) == 1 and not (path / INFER_CFG).is_file():
            path = onnx_files[0]
    for bundled in zoo.DETECTION.values():
        if path.name == bundled.filename:
            out = {**bundled.preset, **out}
    folder = path if path.is_dir() else path.parent
    if (folder / INFER_CFG).is_file():
        out["infer_cfg"] = folder / INFER_CFG
    if (folder / LABELS_FILE).is_file():
        out["labels"] = folder / LABELS_FILE
    if path.suffix == ".onnx" and path.is_file() and "labels" not in out:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        key = out.get("labels_key", "character")
        if meta.get(key):
            out["labels"] = [x for x in meta[key].splitlines() if x.strip()]
    return out


def model_file(model: Any) -> Any:
    """A zoo name -> its file (load_model takes paths); anything else unchanged."""
    return zoo.model_path(model) if isinstance(model, str) and model in zoo.DETECTION else model


NMS_PLACEMENTS = ("auto", "graph", "host")


def graph_has_nms(model: Any) -> bool:
    """Whether the model's own graph runs NMS (Paddle multiclass_nms*, ONNX NonMaxSuppression); read from the files,
    before any engine is built."""
    try:
        source = detect_source(model)
    except PPDeployError:
        return False
    if source.is_paddle:
        return b"multiclass_nms" in source.model_file.read_bytes()
    graph = onnx.load(str(source.model_file), load_external_data=False).graph
    return any(n.op_type == "NonMaxSuppression" for n in graph.node)


def nms_placement(model: Any, backend: str, nms: str = "auto") -> str:
    """"graph", "host", or "none" (the model has no NMS in its graph: the task runs it on the host anyway).

    "auto" follows the first backend the chain will try (`Backend.nms_in_graph`); Paddle Inference runs the
    original program, NMS included, whatever is asked."""
    if nms not in NMS_PLACEMENTS:
        raise ConfigError(f"nms must be one of {', '.join(NMS_PLACEMENTS)}, got {nms!r}")
    if not graph_has_nms(model):
        return "none"
    first = first_runnable(backend) or chain_for(backend)[0][0]
    cls = BACKENDS.get(first)
    if cls.consumes == "paddle":
        return "graph"
    if nms == "auto":
        return "graph" if cls.nms_in_graph else "host"
    return nms


class Detector(Task):
    """`Detector("layout-cdla").predict("page.png").detections` -> [Detection(class_id, label, score, box)].

    As a Task (registered as "detection", served at /v1/detect): one role, the config's own model."""

    name = "detection"
    route = "detect"
    roles = ("model",)
    default_models = {"model": DEFAULT_MODEL}

    def __init__(self, model: Any = DEFAULT_MODEL, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None, cache_dir: str | Path | None = None,
                 extra: Mapping[str, Any] | None = None, nms: str = "auto", calib: Any = None, **options: Any):
        """extra: backend switches for load_model (e.g. {"mkldnn": False}: Paddle Inference without oneDNN).
        nms: where a model with NMS in its graph runs it: "graph" (the engine), "host" (the graph is cut before NMS
        and OpenCV's NMSBoxesBatched runs it), or "auto" (the first backend's `nms_in_graph`).
        calib: INT8 calibration (a CalibrationSet, e.g. Detector.calibration("model", folder, model=...))."""
        side = model_side_options(model)
        side.update({k: v for k, v in options.items() if v is not None})
        self.nms_placement = nms_placement(model_file(model), backend, nms)
        self.deployment = load_model(model_file(model), backend=backend, precision=precision, threads=threads,
                                     cache_dir=cache_dir, extra=extra, calib=calib,
                                     head=heads.NMS_HOST if self.nms_placement == "host" else None)
        try:
            self._init(self.deployment.runner, side)
        except BaseException:
            self.deployment.close()
            raise

    @classmethod
    def from_runner(klass, runner: Any, **options: Any) -> Detector:
        """On a runner you hold (no model loading); options as for Detector(...)."""
        self = klass.__new__(klass)
        self.deployment = None
        self._init(runner, options)
        return self

    def _init(self, runner: Any, options: Mapping[str, Any]) -> None:
        options = dict(options)
        self.options = DetectorOptions.build(options.pop("infer_cfg", None), **options)
        self.runner = runner
        self.layout: HeadLayout = inspect_outputs(runner.io)
        image_inputs = [t for t in runner.io.inputs if len(t.shape) == 4]
        if len(image_inputs) != 1:
            raise ConfigError(f"a detector takes one image input (NCHW); this model takes "
                              f"{[t.describe() for t in runner.io.inputs]}")
        spec = image_inputs[0]
        self.image_input = spec.name
        self.input_names = [t.name for t in runner.io.inputs]
        unknown = [n for n in self.input_names if n not in (spec.name, "scale_factor", "im_shape")]
        if unknown:
            raise ConfigError(f"detector input(s) {unknown} are not image, scale_factor or im_shape")
        self.fixed = (spec.shape[2], spec.shape[3])
        fixed_batch = [t.shape[0] for t in runner.io.inputs if t.shape and t.shape[0] is not None]
        self.max_batch = min(fixed_batch) if fixed_batch else max(1, self.options.batch_size)
        pre = self.options.preprocess
        if pre.size is None and None not in self.fixed:
            self.options = dataclasses.replace(self.options, preprocess=dataclasses.replace(pre, size=self.fixed))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.options.labels

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    # -- prediction ---------------------------------------------------------------------------------------------
    def predict(self, image: ImageInput) -> DetectionResult:
        return self.predict_batch([image])[0]

    __call__ = predict

    def predict_batch(self, images: Sequence[ImageInput]) -> list[DetectionResult]:
        if not images:
            raise InputError("no images given")
        out: list[DetectionResult] = []
        for start in range(0, len(images), self.max_batch):
            out.extend(self._run([load_image(i, max_pixels=self.options.max_pixels)
                                  for i in images[start: start + self.max_batch]]))
        return out

    def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """BGR images -> the model's feeds (image, and scale_factor / im_shape where the model takes them)."""
        return preprocess_batch(images, self.options.preprocess, self.fixed).feeds(self.input_names, self.image_input)

    def _run(self, bgrs: list[np.ndarray]) -> list[DetectionResult]:
        t0 = time.perf_counter()
        batch = preprocess_batch(bgrs, self.options.preprocess, self.fixed)
        t1 = time.perf_counter()
        outputs = self.runner.infer(batch.feeds(self.input_names, self.image_input))
        t2 = time.perf_counter()
        rows = self.postprocess(outputs, batch.image.shape[2:], batch.scale_factor, batch.im_shape,
                                batch.orig_shape)
        t3 = time.perf_counter()
        n = len(bgrs)
        timings = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n,
                   "postprocess": (t3 - t2) * 1e3 / n, "total": (t3 - t0) * 1e3 / n}
        results = []
        for r, (h, w) in zip(rows, batch.orig_shape):
            dets = [Detection(int(c), self.label(int(c)), float(s), (float(x1), float(y1), float(x2), float(y2)))
                    for c, s, x1, y1, x2, y2 in r]
            results.append(DetectionResult(dets, int(w), int(h), dict(timings)))
        return results

    def postprocess(self, outputs: Mapping[str, np.ndarray], input_hw: Sequence[int], scale_factor: np.ndarray,
                    im_shape: np.ndarray, orig_shape: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Model outputs -> per image Kx6 rows (class, score, x1, y1, x2, y2) in original image pixels."""
        nms = self.options.nms
        n = len(orig_shape)
        # PaddleDetection divides the boxes by the scale_factor input inside the graph (NMS rows, exclude_nms boxes)
        in_original = self.layout.kind != "raw" and "scale_factor" in self.input_names
        if self.layout.kind == "nms":
            per_image = split_nms_rows(outputs, self.layout, n)
            per_image = [r[r[:, 1] > nms.score_threshold][: nms.keep_top_k] for r in per_image]
        else:
            if self.layout.kind == "raw":
                boxes, scores = decode_raw(outputs, self.layout, int(input_hw[0]), int(input_hw[1]),
                                           self.options.strides)
            else:
                boxes = outputs[self.layout.names[0]]
                scores = np.swapaxes(outputs[self.layout.names[1]], 1, 2)
            per_image = [host_nms(boxes[i], scores[i], nms) for i in range(n)]
        out = []
        for i, rows in enumerate(per_image):
            rows = rows.copy()
            if not in_original:
                rh, rw = im_shape[i]
                rows[:, [2, 4]] = rows[:, [2, 4]].clip(0, rw) / scale_factor[i][1]
                rows[:, [3, 5]] = rows[:, [3, 5]].clip(0, rh) / scale_factor[i][0]
            h, w = orig_shape[i]
            rows[:, [2, 4]] = rows[:, [2, 4]].clip(0, w)
            rows[:, [3, 5]] = rows[:, [3, 5]].clip(0, h)
            out.append(rows)
        return out

    def close(self) -> None:
        if self.deployment is not None:
            self.deployment.close()
            self.deployment = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the Task contract ---------------------------------------------------------------------------------------
    @classmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> Detector:
        """infer_cfg.yml / labels.txt next to the source are used unless the options name others; relative paths in
        the options are relative to the config's folder."""
        options = dict(options)
        if context.source_dir is not None:
            for key, value in model_side_options(context.source_dir).items():
                options.setdefault(key, value)
        for key in ("labels", "infer_cfg"):
            if isinstance(options.get(key), str) and not Path(options[key]).is_absolute():
                options[key] = (context.base_dir or Path.cwd()) / options[key]
        if context.max_pixels is not None:
            options.setdefault("max_pixels", context.max_pixels)
        return cls.from_runner(runners["model"], **options)

    def execute(self, inputs: Sequence[ImageInput]) -> list[DetectionResult]:
        return self.predict_batch(inputs)

    def finalize(self) -> None:
        self.close()

    @classmethod
    def role_of(cls, model: str) -> str | None:
        """A bundled detector, or a folder with PaddleDetection's infer_cfg.yml."""
        if model in zoo.DETECTION or (Path(model) / INFER_CFG).is_file():
            return "model"
        return None

    @classmethod
    def check_config(cls, pipeline: Mapping[str, str], options: Mapping[str, Any]) -> None:
        super().check_config(pipeline, options)
        unknown = sorted(set(options) - set(option_names()))
        if unknown:
            raise ValueError(f"unknown detection option(s) {unknown}; valid: {', '.join(option_names())}")

    @classmethod
    def calibration(cls, role: str, folder: str | Path, *, runners: Mapping[str, Any] | None = None,
                    limit: int | None = None, input_name: str = "x", model: str | Path | None = None) -> CalibrationSet:
        """Images of `folder` through the model's preprocessing; with COCO annotations there, the set is chosen to
        cover every class and every object scale (InputError naming what the folder lacks)."""
        target = model if model is not None else DEFAULT_MODEL
        side = model_side_options(target)
        side.pop("labels_key", None)
        options = DetectorOptions.build(side.pop("infer_cfg", None), **side)
        return detection_calibration(folder, options.preprocess, model_file(target), limit=limit)

    @classmethod
    def metric(cls, role: str, data: str | Path, runners: Mapping[str, Any], **options: Any) -> TaskMetric:
        """mAP@0.5 on the COCO folder `data` with the candidate runner; `model` (option) says whose preprocessing
        and labels to use (default: the bundled layout model)."""
        model = options.pop("model", None) or DEFAULT_MODEL
        side = model_side_options(model)
        side.update(options)
        side["score_threshold"] = options.get("score_threshold", EVAL_SCORE_THRESHOLD)

        def build(runner: Any) -> Detector:
            return cls.from_runner(runner, **side)

        return detection_map_metric(data, build)

    @classmethod
    def unordered_outputs(cls, io: Any) -> frozenset[str]:
        """NMS rows in the graph: engines order detections of equal score differently."""
        try:
            layout = inspect_outputs(io)
        except ConfigError:
            return frozenset()
        return frozenset(layout.names[:1]) if layout.has_nms else frozenset()

    @classmethod
    def example_feeds(cls, io: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """scale_factor 1 and im_shape the image's size (random ones give boxes of negative size, which engines'
        NMS treat differently, so a verify on them would compare nonsense)."""
        out = dict(feeds)
        image = next((v for v in out.values() if np.ndim(v) == 4), None)
        if image is not None:
            n, _, h, w = np.shape(image)
            if "scale_factor" in out:
                out["scale_factor"] = np.ones((n, 2), np.asarray(out["scale_factor"]).dtype)
            if "im_shape" in out:
                out["im_shape"] = np.tile(np.asarray([h, w], np.asarray(out["im_shape"]).dtype), (n, 1))
        return out

    def encode(self, result: DetectionResult) -> dict[str, Any]:
        return result.to_dict()


__all__ = ["DEFAULT_MODEL", "NMS_PLACEMENTS", "Detector", "DetectorOptions", "graph_has_nms", "model_file",
           "model_side_options", "nms_placement", "option_names"]
