"""Single text-line images (a crop, a caption, a field of a form): the whole image is one line plus a margin.

Some are light text on a dark background, some blurred or noisy. The line's height spans `text_px`.
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
    to_bgr,
)
from ppdeploy.tasks.ocr.synth.page import scan_noise

Image = lazy_import("PIL.Image", install="pillow")


@dataclass(frozen=True)
class LineOptions:
    text_px: tuple[int, int] = (10, 64)
    margin: tuple[float, float] = (0.1, 0.8)
    """Margin around the ink on each side, as a fraction of the font size."""
    phrases: tuple[int, int] = (1, 2)
    """A line joins this many generated texts."""
    inverted_fraction: float = 0.15
    blur_fraction: float = 0.25
    noise_fraction: float = 0.25


def render(rng: random.Random, opts: LineOptions, kit: Kit) -> tuple[np.ndarray, list[LabelledLine]]:
    size = rng.randint(*opts.text_px)
    text = " ".join(kit.text(rng) for _ in range(rng.randint(*opts.phrases)))
    font = kit.font(kit.pick_face(rng, text), size)
    probe = new_draw(Image.new("RGB", (8, 8)))
    left, top, right, bottom = measure(probe, text, font)
    mx = max(2, int(size * rng.uniform(*opts.margin)))
    my = max(2, int(size * rng.uniform(*opts.margin)))
    w, h = (right - left) + 2 * mx, (bottom - top) + 2 * my
    if rng.random() < opts.inverted_fraction:
        v = rng.randint(20, 90)
        bg, fg = (v, v, v + rng.randint(0, 40)), (rng.randint(215, 255),) * 3
    else:
        bg = tuple(rng.randint(200, 255) for _ in range(3))
        fg = ink(rng)
    canvas = Image.new("RGB", (w, h), bg)
    line = draw_line(new_draw(canvas), text, font, mx, my, fg)
    img = scan_noise(to_bgr(canvas), rng, opts.blur_fraction, opts.noise_fraction)
    return img, [line]
