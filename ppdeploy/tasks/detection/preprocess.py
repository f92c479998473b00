"""Detector preprocessing: PaddleDetection's `infer_cfg.yml` ops (Resize, NormalizeImage, Permute, PadStride) on
BGR uint8 images, and the feeds a detector graph takes (`image`, `scale_factor`, `im_shape`).

The ops follow PaddleDetection's `deploy/python/preprocess.py`: images are converted to RGB first (its decoder
does), Resize scales to `target_size` (or, with keep_ratio, by min(target_min / short side, target_max / long
side)), NormalizeImage divides by 255 when `is_scale` and applies mean/std when `norm_type` is mean_std. A batch
is padded (bottom/right, zeros) to the model's fixed input size or to the batch's largest image, rounded up to
PadStride's stride. An op this module does not implement is an InputError naming it, never silently skipped.
Without infer_cfg.yml the same steps come from ppdeploy's options (`DetectorOptions`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import ConfigError, InputError
from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="pip install opencv-python-headless")
yaml = lazy_import("yaml", install="pip install pyyaml")

INFER_CFG = "infer_cfg.yml"
KNOWN_OPS = ("Resize", "NormalizeImage", "Permute", "PadStride")


@dataclass(frozen=True)
class Preprocess:
    """What turns one image into the detector's input. `size` is (height, width) or None (keep the image size)."""

    size: tuple[int, int] | None = None
    keep_ratio: bool = False
    interp: int = 1  # cv2 interpolation code (1: INTER_LINEAR)
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    to_rgb: bool = True  # PaddleDetection decodes to RGB; rapid_layout feeds BGR
    pad_stride: int = 0

    @classmethod
    def from_ops(cls, ops: Sequence[Mapping[str, Any]], *, to_rgb: bool = True, where: str = INFER_CFG) -> Preprocess:
        """PaddleDetection's `Preprocess:` list -> Preprocess. Unknown ops raise InputError naming them."""
        pre = cls(size=None, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), to_rgb=to_rgb)
        for op in ops:
            kind = op.get("type")
            if kind == "Resize":
                target = op.get("target_size")
                if not isinstance(target, (list, tuple)) or len(target) != 2:
                    raise InputError(f"{where}: Resize.target_size must be [height, width], got {target!r}")
                pre = replace(pre, size=(int(target[0]), int(target[1])), keep_ratio=bool(op.get("keep_ratio", False)),
                              interp=int(op.get("interp", 1)))
            elif kind == "NormalizeImage":
                scale = 1.0 / 255.0 if op.get("is_scale", True) else 1.0
                if op.get("norm_type", "mean_std") == "mean_std":
                    pre = replace(pre, scale=scale, mean=_triple(op.get("mean", pre.mean), where),
                                  std=_triple(op.get("std", pre.std), where))
                else:
                    pre = replace(pre, scale=scale, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
            elif kind == "Permute":
                pass  # the output is always CHW
            elif kind == "PadStride":
                pre = replace(pre, pad_stride=int(op.get("stride", 0)))
            else:
                raise InputError(f"{where}: preprocessing op {kind!r} is not supported",
                                 hint=f"supported ops: {', '.join(KNOWN_OPS)}")
        return pre

    def resize_to(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        if self.size is None:
            return height, width
        th, tw = self.size
        if not self.keep_ratio:
            return th, tw
        scale = min(min(th, tw) / min(height, width), max(th, tw) / max(height, width))
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def image(self, bgr: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """One HxWx3 BGR uint8 image -> (CHW float32, (scale_y, scale_x))."""
        h, w = bgr.shape[:2]
        rh, rw = self.resize_to(h, w)
        img = bgr if (rh, rw) == (h, w) else cv2.resize(bgr, (rw, rh), interpolation=self.interp)
        if self.to_rgb:
            img = img[..., ::-1]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        # (x * scale - mean) / std as one multiply-add per pixel
        out = img.astype(np.float32) * (np.float32(self.scale) / std) - mean / std
        return np.ascontiguousarray(out.transpose(2, 0, 1)), (rh / h, rw / w)


@dataclass
class Batch:
    """Preprocessed images: `image` Nx3xHxW, per image (scale_y, scale_x), resized (h, w) and original (h, w)."""

    image: np.ndarray
    scale_factor: np.ndarray  # N x 2 float32, (scale_y, scale_x)
    im_shape: np.ndarray  # N x 2 float32, resized (h, w)
    orig_shape: list[tuple[int, int]] = field(default_factory=list)

    def feeds(self, input_names: Sequence[str], image_input: str) -> dict[str, np.ndarray]:
        feeds = {image_input: self.image}
        for name in input_names:
            if name == "scale_factor":
                feeds[name] = self.scale_factor
            elif name == "im_shape":
                feeds[name] = self.im_shape
        return feeds


def preprocess_batch(images: Sequence[np.ndarray], pre: Preprocess,
                     fixed: tuple[int | None, int | None] = (None, None)) -> Batch:
    """BGR images -> one padded batch. `fixed`: the model's static input (height, width), if any."""
    if not images:
        raise InputError("no images given")
    tensors, scales, shapes = [], [], []
    for bgr in images:
        chw, scale = pre.image(bgr)
        tensors.append(chw)
        scales.append(scale)
        shapes.append(chw.shape[1:])
    height = max(s[0] for s in shapes)
    width = max(s[1] for s in shapes)
    if pre.pad_stride:
        height = -(-height // pre.pad_stride) * pre.pad_stride
        width = -(-width // pre.pad_stride) * pre.pad_stride
    fh, fw = fixed
    if (fh is not None and height > fh) or (fw is not None and width > fw):
        raise ConfigError(f"images preprocess to {height}x{width} but the model's input is fixed to {fh}x{fw}",
                          hint="set the Resize target_size (infer_cfg.yml) or input_size option to the model's size")
    height, width = fh or height, fw or width
    batch = np.zeros((len(tensors), 3, height, width), np.float32)
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return Batch(batch, np.asarray(scales, np.float32), np.asarray(shapes, np.float32),
                 [tuple(b.shape[:2]) for b in images])


def read_infer_cfg(path: str | Path) -> dict[str, Any]:
    """PaddleDetection's infer_cfg.yml as a dict (InputError when unreadable or without a Preprocess list)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("Preprocess"), list):
        raise InputError(f"{path} has no 'Preprocess' list; is it PaddleDetection's infer_cfg.yml?")
    return doc


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: mean/std must be three numbers, got {value!r}") from exc
    return a, b, c


__all__ = ["INFER_CFG", "KNOWN_OPS", "Batch", "Preprocess", "preprocess_batch", "read_infer_cfg"]
