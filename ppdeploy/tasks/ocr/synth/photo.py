"""Photographed pages: a document page (page.py) lying on a table, seen at an angle by a phone camera.

Degradations, each drawn per image: perspective (the page's corners move by up to `perspective` of its size),
uneven light (a linear gradient plus a soft shadow), Gaussian or motion blur, sensor noise, and JPEG compression
(the writer always stores photos as JPEG, see suite.py). Line boxes go through the same homography, so the ground
truth stays a quadrilateral around each line's ink.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.dataset import LabelledLine
from ppdeploy.tasks.ocr.synth import page as page_kind
from ppdeploy.tasks.ocr.synth.canvas import Kit

cv2 = lazy_import("cv2", install="opencv-python-headless")


@dataclass(frozen=True)
class PhotoOptions:
    page: page_kind.PageOptions = field(default_factory=lambda: page_kind.PageOptions(
        width=(800, 1600), text_px=(16, 40), rotate_degrees=0.0, blur_fraction=0.0, noise_fraction=0.0))
    perspective: tuple[float, float] = (0.02, 0.10)
    """How far each page corner moves, as a fraction of the page's size."""
    border: tuple[float, float] = (0.03, 0.12)
    """Table visible around the page, as a fraction of its size."""
    light: tuple[float, float] = (0.15, 0.45)
    """Depth of the lighting gradient / shadow (0: even light)."""
    blur_sigma: tuple[float, float] = (0.5, 1.6)
    motion_fraction: float = 0.3
    noise_sigma: tuple[float, float] = (2.0, 8.0)


def render(rng: random.Random, opts: PhotoOptions, kit: Kit) -> tuple[np.ndarray, list[LabelledLine]]:
    img, lines = page_kind.render(rng, opts.page, kit)
    h, w = img.shape[:2]
    bx, by = int(w * rng.uniform(*opts.border)), int(h * rng.uniform(*opts.border))
    table = tuple(rng.randint(40, 160) for _ in range(3))
    canvas = cv2.copyMakeBorder(img, by, by, bx, bx, cv2.BORDER_CONSTANT, value=table)
    H, W = canvas.shape[:2]
    src = np.float32([[bx, by], [bx + w, by], [bx + w, by + h], [bx, by + h]])
    jitter = rng.uniform(*opts.perspective)
    dst = src + np.float32([[rng.uniform(-1, 1) * jitter * w, rng.uniform(-1, 1) * jitter * h] for _ in range(4)])
    dst[:, 0] = np.clip(dst[:, 0], 0, W - 1)
    dst[:, 1] = np.clip(dst[:, 1], 0, H - 1)
    homography = cv2.getPerspectiveTransform(src, dst)
    # the page moves inside the original canvas (the table shows through where it left)
    warped = cv2.warpPerspective(canvas, homography, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=table)
    for line in lines:
        pts = np.array(line.box, np.float32).reshape(-1, 1, 2) + np.float32([bx, by])
        line.box = cv2.perspectiveTransform(pts, homography).reshape(-1, 2).tolist()
    warped = _light(warped, rng, opts.light)
    warped = _blur(warped, rng, opts)
    noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(*opts.noise_sigma), warped.shape)
    return np.clip(warped.astype(np.float32) + noise, 0, 255).astype(np.uint8), lines


def _light(img: np.ndarray, rng: random.Random, depth_range: tuple[float, float]) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    depth = rng.uniform(*depth_range)
    field_ = 1.0 - depth * ramp
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.6) * max(h, w)
    shadow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    field_ *= 1.0 - rng.uniform(0.0, depth) * shadow
    field_ *= rng.uniform(0.9, 1.1)
    return np.clip(img.astype(np.float32) * field_[:, :, None], 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, rng: random.Random, opts: PhotoOptions) -> np.ndarray:
    if rng.random() < opts.motion_fraction:
        k = rng.randint(3, 7)
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        return cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6))
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(*opts.blur_sigma))
