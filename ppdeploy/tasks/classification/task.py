"""Image classification: decode -> preprocess (declared in preprocess.yaml) -> any runner -> top-k labels.

A model directory may hold, next to the model files:
  labels.txt       one class name per line (line n = class n); without it classes are named by index.
  preprocess.yaml  how an image becomes the model input; every key is optional (ImageNet defaults):
                     resize_short: 256        # resize so the short side is this (aspect kept); 0 = no resize
                     crop_size: 224           # center crop to crop_size x crop_size; 0 = no crop
                     channel_order: RGB       # order the model was trained on (RGB or BGR)
                     mean: [0.485, 0.456, 0.406]
                     std: [0.229, 0.224, 0.225]
                     scale: 0.00392156862745098   # pixels are multiplied by this before mean/std
                     interpolation: linear    # linear | cubic | area | nearest
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import ConfigError, InputError
from ppdeploy.tasks.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image

PREPROCESS_FILE = "preprocess.yaml"
LABELS_FILE = "labels.txt"
_INTERPOLATIONS = ("linear", "cubic", "area", "nearest")


@dataclass(frozen=True)
class PreprocessConfig:
    resize_short: int = 256
    crop_size: int = 224
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.channel_order.upper() not in ("RGB", "BGR"):
            raise ConfigError(f"preprocess channel_order must be RGB or BGR, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess mean and std need 3 values each")
        if any(s == 0 for s in self.std):
            raise ConfigError("preprocess std values must be non-zero")
        if self.resize_short < 0 or self.crop_size < 0:
            raise ConfigError("preprocess resize_short and crop_size must be >= 0")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"preprocess interpolation must be one of {_INTERPOLATIONS}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocess key(s) {unknown}", hint=f"valid keys: {', '.join(sorted(known))}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid preprocess config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> "PreprocessConfig":
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read preprocess config {path}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must be a mapping of preprocess keys")
        return cls.from_mapping(data)


def preprocess_image(bgr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HxWx3 BGR uint8 -> 3xHxW float32 (resize short side, center crop, channel order, scale, mean/std)."""
    import cv2

    interp = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
              "nearest": cv2.INTER_NEAREST}[cfg.interpolation]
    img = bgr
    if cfg.resize_short:
        h, w = img.shape[:2]
        ratio = cfg.resize_short / min(h, w)
        new_w, new_h = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
        if (new_w, new_h) != (w, h):
            img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    if cfg.crop_size:
        h, w = img.shape[:2]
        size = cfg.crop_size
        if h < size or w < size:  # an image smaller than the crop (resize_short disabled): stretch to fit
            img = cv2.resize(img, (max(w, size), max(h, size)), interpolation=interp)
            h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        img = img[top:top + size, left:left + size]
    if cfg.channel_order.upper() == "RGB":
        img = img[:, :, ::-1]
    out = np.empty((3, img.shape[0], img.shape[1]), dtype=np.float32)
    for c in range(3):
        np.multiply(img[:, :, c], np.float32(cfg.scale / cfg.std[c]), out=out[c], casting="unsafe")
        out[c] -= np.float32(cfg.mean[c] / cfg.std[c])
    return out


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


class Classifier:
    """`Classifier("model_dir", backend="auto").predict("cat.jpg").top1.label`."""

    def __init__(self, model: Any, backend: str = "auto", precision: str = "fp32", topk: int = 5,
                 labels: str | Path | Sequence[str] | None = None,
                 preprocess: PreprocessConfig | Mapping[str, Any] | str | Path | None = None,
                 threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        from ppdeploy.deploy.load import load_model

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
