"""Visualise an OCR result: the page with its boxes on the left, the recognised text at the same places on the
right (PaddleOCR's draw_ocr_box_txt layout). Text needs a CJK-capable font; without one only boxes are drawn."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.fonts import APT_HINT, find_cjk_font

cv2 = lazy_import("cv2", install="opencv-python-headless")
Image = lazy_import("PIL.Image", install="pillow")
ImageDraw = lazy_import("PIL.ImageDraw", install="pillow")
ImageFont = lazy_import("PIL.ImageFont", install="pillow")

log = logging.getLogger("ppdeploy.ocr.draw")


def draw_result(bgr: np.ndarray, lines: list[Any], font_path: str | Path | None = None) -> tuple[np.ndarray, bool]:
    """Return (BGR image twice as wide as the page, whether text was drawn). `lines` have .box and .text."""
    h, w = bgr.shape[:2]
    font_file = Path(font_path) if font_path else find_cjk_font()
    if font_file is None or not font_file.is_file():
        log.warning("no CJK font found: drawing boxes only (%s)", APT_HINT)
        font_file = None
    page = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    overlay = page.copy()
    right = Image.new("RGB", (w, h), (255, 255, 255))
    draw_left, draw_right = ImageDraw.Draw(overlay), ImageDraw.Draw(right)
    rng = random.Random(0)  # stable colours between runs
    for line in lines:
        color = (rng.randint(0, 200), rng.randint(0, 200), rng.randint(0, 200))
        pts = [tuple(map(float, p)) for p in line.box]
        draw_left.polygon(pts, fill=color)
        draw_right.polygon(pts, outline=color, width=2)
        if font_file is not None and line.text:
            box = np.asarray(line.box, dtype=np.float32)
            box_h = float(np.linalg.norm(box[0] - box[3]))
            box_w = float(np.linalg.norm(box[0] - box[1]))
            size = max(8, int(min(box_h * 0.8, box_w / max(len(line.text), 1) * 1.6)))
            font = ImageFont.truetype(str(font_file), size)
            draw_right.text((float(box[0][0]) + 3, float(box[0][1]) + max(0.0, (box_h - size) / 2)), line.text,
                            fill=(0, 0, 0), font=font)
    left = Image.blend(page, overlay, 0.5)
    canvas = Image.new("RGB", (w * 2, h), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (w, 0))
    return np.asarray(canvas)[:, :, ::-1].copy(), font_file is not None


def check_font(font_path: str | Path) -> Path:
    """`font_path` if it is a font file PIL can draw with; else a PPDeployError saying why (checked before any model
    loads, so a typo does not cost a pipeline build)."""
    path = Path(font_path)
    if not path.is_file():
        raise PPDeployError(f"font file not found: {path}", hint=APT_HINT)
    try:
        ImageFont.truetype(str(path), 12)
    except (OSError, ValueError) as exc:
        raise PPDeployError(f"{path} is not a font PIL can read ({type(exc).__name__}: {exc})",
                            hint="pass a .ttf/.ttc/.otf file; " + APT_HINT) from None
    return path


def check_drawing_target(path: str | Path) -> Path:
    """`path` if an image can be written there (a format OpenCV writes, an existing folder); else a PPDeployError."""
    path = Path(path)
    if not cv2.haveImageWriter(str(path)):
        raise PPDeployError(f"cannot write a drawing to {path}: '{path.suffix or '(no extension)'}' is not an image "
                            "format OpenCV writes", hint="use .png or .jpg")
    if not path.parent.is_dir():
        raise PPDeployError(f"cannot write a drawing to {path}: folder {path.parent} does not exist")
    return path


def save_drawing(path: str | Path, bgr: np.ndarray, lines: list[Any], font_path: str | Path | None = None) -> bool:
    image, with_text = draw_result(bgr, lines, font_path)
    path = Path(path)
    ok = cv2.imwrite(str(path), image)
    if not ok:
        raise PPDeployError(f"could not write {path} (unknown extension or unwritable folder?)")
    return with_text
