"""Document pages of any size and text height: the evaluation set's page, small-text, large-text and dense kinds.

A page gets one body text size drawn from `text_px` (lines vary around it by `spread`), one or more columns, and
rows of one or more text chunks separated by gaps wide enough that a detector sees separate lines. Optional mild
scan degradations: a small rotation, Gaussian blur, Gaussian noise (JPEG is the writer's choice, see suite.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.dataset import LabelledLine
from ppdeploy.tasks.ocr.synth.canvas import (
    Kit,
    draw_line,
    ink,
    measure,
    new_draw,
    paper,
    to_bgr,
)

cv2 = lazy_import("cv2", install="opencv-python-headless")


@dataclass(frozen=True)
class PageOptions:
    width: tuple[int, int] = (800, 1280)
    """Page width range in pixels."""
    aspect: tuple[float, float] = (1.2, 1.45)
    """Height / width range."""
    text_px: tuple[int, int] = (14, 34)
    """Range of the page's body font size in pixels (the em size; CJK ink is about 0.9 of it)."""
    spread: float = 0.15
    """Each line's size is the body size times 1 +- spread (kept inside text_px)."""
    spacing: tuple[float, float] = (0.5, 1.2)
    """Vertical gap between rows, as a fraction of the row's size."""
    columns: tuple[int, ...] = (1,)
    """Choices for the number of text columns."""
    chunks: int = 3
    """At most this many separate text chunks per row within a column (table-like rows)."""
    max_lines: int = 60
    """Stop filling the page after this many lines (bounds recognition time on big pages with small text)."""
    rotate_degrees: float = 1.0
    blur_fraction: float = 0.2
    noise_fraction: float = 0.2


def render(rng: random.Random, opts: PageOptions, kit: Kit) -> tuple[np.ndarray, list[LabelledLine]]:
    """-> (BGR uint8 page, labelled lines)."""
    width = rng.randint(*opts.width)
    height = int(width * rng.uniform(*opts.aspect))
    body = rng.uniform(*opts.text_px)
    page, tint = paper(rng, width, height)
    draw = new_draw(page)
    fill = ink(rng)
    margin = max(8, int(width * rng.uniform(0.03, 0.08)))
    n_cols = rng.choice(opts.columns)
    gutter = max(int(body * 2.5), int(width * 0.03))
    col_w = (width - 2 * margin - (n_cols - 1) * gutter) // n_cols
    lines: list[LabelledLine] = []
    for col in range(n_cols):
        x0 = margin + col * (col_w + gutter)
        y = margin
        cap = (col + 1) * opts.max_lines // n_cols  # share the line budget between the columns
        while len(lines) < cap:
            size = int(round(min(max(body * rng.uniform(1 - opts.spread, 1 + opts.spread), opts.text_px[0]),
                                 opts.text_px[1])))
            row_h = 0
            x = x0 + (rng.randint(0, col_w // 6) if rng.random() < 0.3 else 0)
            for _ in range(rng.randint(1, opts.chunks)):
                room = x0 + col_w - x
                text = kit.text(rng)
                font = kit.font(kit.pick_face(rng, text), size)
                left, top, right, bottom = measure(draw, text, font)
                while right - left > room and len(text) > 1:  # shorten to fit the column
                    text = text[: max(1, int(len(text) * room / (right - left)) - 1)].strip() or text[0]
                    left, top, right, bottom = measure(draw, text, font)
                if right - left > room or y + (bottom - top) > height - margin:
                    break
                lines.append(draw_line(draw, text, font, x, y, fill))
                row_h = max(row_h, bottom - top)
                x += (right - left) + int(size * rng.uniform(2.5, 5.0))
                if x >= x0 + col_w - 2 * size:
                    break
            if row_h == 0 and y + size * 2 > height - margin:
                break
            y += max(row_h, size // 2) + int(size * rng.uniform(*opts.spacing)) + 1
            if rng.random() < 0.1:  # a paragraph break
                y += int(size * rng.uniform(1, 4))
            if y > height - margin - size:
                break
    img = to_bgr(page)
    img, lines = rotate(img, lines, rng.uniform(-opts.rotate_degrees, opts.rotate_degrees), tint)
    img = scan_noise(img, rng, opts.blur_fraction, opts.noise_fraction)
    return img, lines


def rotate(img: np.ndarray, lines: list[LabelledLine], degrees: float, border) -> tuple[np.ndarray, list[LabelledLine]]:
    """Rotate the page about its centre, keeping its size; the line boxes rotate with it."""
    if abs(degrees) <= 0.05:
        return img, lines
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    img = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=tuple(int(c) for c in border[::-1]))
    for line in lines:
        line.box = (np.hstack([np.array(line.box), np.ones((4, 1))]) @ matrix.T).tolist()
    return img, lines


def scan_noise(img: np.ndarray, rng: random.Random, blur_fraction: float, noise_fraction: float) -> np.ndarray:
    if rng.random() < blur_fraction:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    if rng.random() < noise_fraction:
        noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(2, 6), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img
