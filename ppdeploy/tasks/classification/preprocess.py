"""How an image becomes a classifier's input, declared in the model folder's preprocess.yaml.

Every key is optional (ImageNet defaults):
  resize_short: 256        # resize so the short side is this (aspect kept); 0 = no resize
  crop_size: 224           # center crop to crop_size x crop_size; 0 = no crop
  channel_order: RGB       # order the model was trained on (RGB or BGR)
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  scale: 0.00392156862745098   # pixels are multiplied by this before mean/std
  interpolation: linear    # linear | cubic | area | nearest
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="opencv-python-headless")

PREPROCESS_FILE = "preprocess.yaml"
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
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read preprocess config {path}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must be a mapping of preprocess keys")
        return cls.from_mapping(data)


def preprocess_image(bgr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HxWx3 BGR uint8 -> 3xHxW float32 (resize short side, center crop, channel order, scale, mean/std)."""
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


__all__ = ["PREPROCESS_FILE", "PreprocessConfig", "preprocess_image"]
