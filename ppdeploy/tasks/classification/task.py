"""Image classification: decode -> preprocess (ppdeploy.tasks.classification.preprocess) -> any runner -> top-k.

A model directory may hold, next to the model files, labels.txt (one class name per line, line n = class n;
without it classes are named by index) and preprocess.yaml. `Classifier` is also the "classification" Task
(ppdeploy.tasks.base): one role, the config's own model, served at /v1/classify.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import ConfigError, InputError
from ppdeploy.deploy.load import load_model
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.base import Task, TaskContext
from ppdeploy.tasks.classification.calibrate import (
    classification_accuracy,
    classification_calibration,
)
from ppdeploy.tasks.classification.preprocess import (
    PREPROCESS_FILE,
    PreprocessConfig,
    preprocess_image,
)
from ppdeploy.tasks.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image

LABELS_FILE = "labels.txt"


def read_labels(path: str | Path) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc}") from exc


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that already look like probabilities are kept; logits go through a softmax."""
    scores = scores.astype(np.float64, copy=False)
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Prediction:
    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": round(self.score, 6)}


@dataclass
class ClassificationResult:
    topk: list[Prediction]
    timings: dict[str, float] = field(default_factory=dict)  # preprocess (decode included), infer, postprocess, total: ms per image

    @property
    def top1(self) -> Prediction:
        return self.topk[0]

    def to_dict(self) -> dict[str, Any]:
        return {"topk": [p.to_dict() for p in self.topk], "timings_ms": {k: round(v, 3) for k, v in self.timings.items()}}


class Classifier(Task):
    """`Classifier("model_dir", backend="auto").predict("cat.jpg").top1.label`."""

    name = "classification"
    route = "classify"
    roles = ("model",)
    gate_metric = "top1"  # logits: judged by top-1 agreement, as they are used

    @classmethod
    def claims_folder(cls, folder: Path) -> bool:
        return folder.is_dir() and any((folder / f).is_file() for f in (PREPROCESS_FILE, LABELS_FILE))

    def __init__(self, model: Any, backend: str = "auto", precision: str = "fp32", topk: int = 5,
                 labels: str | Path | Sequence[str] | None = None,
                 preprocess: PreprocessConfig | Mapping[str, Any] | str | Path | None = None,
                 threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        model_dir = Path(model) if isinstance(model, (str, Path)) else None
        if model_dir is not None and model_dir.is_file():
            model_dir = model_dir.parent
        if labels is None and model_dir is not None and (model_dir / LABELS_FILE).is_file():
            labels = model_dir / LABELS_FILE
        if preprocess is None and model_dir is not None and (model_dir / PREPROCESS_FILE).is_file():
            preprocess = model_dir / PREPROCESS_FILE
        self.deployment = load_model(model, backend=backend, precision=precision, threads=threads)
        self._init(self.deployment.runner, preprocess, labels, topk, max_pixels)

    @classmethod
    def from_runner(klass, runner: Any, preprocess: PreprocessConfig | Mapping[str, Any] | str | Path | None = None,
                    labels: str | Path | Sequence[str] | None = None, topk: int = 5,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> "Classifier":
        self = klass.__new__(klass)
        self.deployment = None
        self._init(runner, preprocess, labels, topk, max_pixels)
        return self

    def _init(self, runner, preprocess, labels, topk: int, max_pixels: int) -> None:
        if topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        self.runner = runner
        self.input_name = runner.io.inputs[0].name
        if preprocess is None:
            self.preprocess = PreprocessConfig()
        elif isinstance(preprocess, PreprocessConfig):
            self.preprocess = preprocess
        elif isinstance(preprocess, Mapping):
            self.preprocess = PreprocessConfig.from_mapping(preprocess)
        else:
            self.preprocess = PreprocessConfig.from_file(preprocess)
        if labels is None:
            self.labels = None
        elif isinstance(labels, (str, Path)):
            self.labels = read_labels(labels)
        else:
            self.labels = [str(x) for x in labels]
        self.topk = topk
        self.max_pixels = max_pixels
        spec = runner.io.inputs[0].shape
        if len(spec) == 4 and self.preprocess.crop_size and all(d is not None for d in spec[2:]):
            if tuple(spec[2:]) != (self.preprocess.crop_size, self.preprocess.crop_size):
                raise ConfigError(
                    f"the model input is {spec[2]}x{spec[3]} but preprocess crops to {self.preprocess.crop_size}",
                    hint="fix crop_size in preprocess.yaml")

    def preprocess_batch(self, images: Iterable[ImageInput]) -> np.ndarray:
        tensors = [preprocess_image(load_image(img, max_pixels=self.max_pixels), self.preprocess) for img in images]
        if not tensors:
            raise InputError("no images given")
        if len({t.shape for t in tensors}) > 1:
            raise InputError("images preprocess to different sizes; set crop_size in the preprocess config to batch them")
        return np.stack(tensors)

    def predict_tensor(self, batch: np.ndarray) -> list[list[Prediction]]:
        """Already-preprocessed Nx3xHxW float32 -> top-k per row."""
        return self._topk(next(iter(self.runner.infer({self.input_name: batch}).values())))

    def predict(self, image: ImageInput) -> ClassificationResult:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[ClassificationResult]:
        t0 = time.perf_counter()
        batch = self.preprocess_batch(images)
        t1 = time.perf_counter()
        scores = next(iter(self.runner.infer({self.input_name: batch}).values()))
        t2 = time.perf_counter()
        preds = self._topk(scores)
        t3 = time.perf_counter()
        n = len(preds)
        timings = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n, "postprocess": (t3 - t2) * 1e3 / n,
                   "total": (t3 - t0) * 1e3 / n}
        return [ClassificationResult(p, dict(timings)) for p in preds]

    def _topk(self, scores: np.ndarray) -> list[list[Prediction]]:
        scores = scores.reshape(scores.shape[0], -1)
        if self.labels is not None and scores.shape[1] != len(self.labels):
            raise ConfigError(f"the model outputs {scores.shape[1]} classes but the labels list has {len(self.labels)}")
        probs = to_probabilities(scores)
        k = min(self.topk, probs.shape[1])
        out = []
        for row in probs:
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([Prediction(int(i), self.labels[i] if self.labels else str(int(i)), float(row[i])) for i in idx])
        return out

    def close(self) -> None:
        if self.deployment is not None:
            self.deployment.close()

    # -- the Task contract ---------------------------------------------------------------------------------------
    @classmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> "Classifier":
        """labels.txt / preprocess.yaml next to the source are used unless the options name others; relative paths
        in the options are relative to the config's folder."""
        options = dict(options)
        if context.source_dir is not None:
            for key, file in (("labels", LABELS_FILE), ("preprocess", PREPROCESS_FILE)):
                if key not in options and (context.source_dir / file).is_file():
                    options[key] = context.source_dir / file
        for key in ("labels", "preprocess"):
            if isinstance(options.get(key), str) and not Path(options[key]).is_absolute():
                options[key] = (context.base_dir or Path.cwd()) / options[key]
        if context.max_pixels is not None:
            options.setdefault("max_pixels", context.max_pixels)
        return cls.from_runner(runners["model"], **options)

    def execute(self, inputs: Sequence[ImageInput]) -> list[ClassificationResult]:
        return self.predict_batch(inputs)

    def finalize(self) -> None:
        self.close()

    @classmethod
    def role_of(cls, model: str) -> str | None:
        """A classifier folder is one with a preprocess.yaml."""
        return "model" if (Path(model) / PREPROCESS_FILE).is_file() else None

    @classmethod
    def calibration(cls, role: str, folder: str | Path, *, runners: Mapping[str, Any] | None = None,
                    limit: int | None = None, input_name: str = "x", model: str | Path | None = None) -> CalibrationSet:
        """Images through the model folder's preprocess.yaml (the ImageNet defaults without one)."""
        yaml_file = Path(model) / PREPROCESS_FILE if model is not None else None
        preprocess = yaml_file if yaml_file is not None and yaml_file.is_file() else None
        return classification_calibration(folder, preprocess, limit=limit, input_name=input_name)

    @classmethod
    def metric(cls, role: str, data: Any, runners: Mapping[str, Any], *, labels: Sequence[int] = (),
               **options: Any) -> TaskMetric:
        """Top-1 accuracy of the candidate on `data` (a CalibrationSet of preprocessed samples), one label each."""
        if not isinstance(data, CalibrationSet):
            raise InputError("the classification metric takes preprocessed samples (a CalibrationSet) and their "
                             "labels, not a folder")
        return classification_accuracy(data, list(labels))



__all__ = ["ClassificationResult", "Classifier", "LABELS_FILE", "Prediction", "read_labels", "to_probabilities"]
