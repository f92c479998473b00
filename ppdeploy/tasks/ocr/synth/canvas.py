"""Drawing helpers shared by the evaluation-set generators: font faces, paper and ink, one labelled line.

The ground-truth box of a line is the axis-aligned box around its ink (PIL's textbbox), in page pixels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.dataset import LabelledLine
from ppdeploy.tasks.ocr.fonts import APT_HINT, FontFace, font_faces
from ppdeploy.tasks.ocr.synth.text import (
    allowed_characters,
    keep_allowed,
    make_line,
    needs_cjk,
)

Image = lazy_import("PIL.Image", install="pillow")
ImageDraw = lazy_import("PIL.ImageDraw", install="pillow")
ImageFont = lazy_import("PIL.ImageFont", install="pillow")


@dataclass
class Kit:
    """What every generator needs once: the installed faces (all styles), the recognizer's character set, and a
    cache of loaded fonts."""

    cjk: list[FontFace]
    any: list[FontFace]
    mono: list[FontFace]
    allowed: set[str] | None
    _fonts: dict[tuple[str, int, int], Any] = field(default_factory=dict)

    @classmethod
    def load(cls) -> "Kit":
        faces = list(font_faces())
        cjk = [f for f in faces if f.cjk]
        if not cjk:
            raise PPDeployError("no CJK font is installed; the synthetic set needs one", hint=APT_HINT)
        mono = [f for f in faces if "Mono" in f.family]
        return cls(cjk, faces, mono, allowed_characters())

    def font(self, face: FontFace, size: int):
        key = (str(face.path), face.index, size)
        if key not in self._fonts:
            self._fonts[key] = ImageFont.truetype(str(face.path), size, index=face.index)
        return self._fonts[key]

    def pick_face(self, rng: random.Random, text: str, *, mono: bool = False) -> FontFace:
        if needs_cjk(text):
            pool = [f for f in self.cjk if "Mono" in f.family] if mono else self.cjk
            return rng.choice(pool or self.cjk)
        return rng.choice((self.mono if mono else self.any) or self.any)

    def text(self, rng: random.Random, maker=make_line) -> str:
        """A non-empty line the recognizer's dictionary can spell."""
        for _ in range(20):
            text = keep_allowed(maker(rng)[0], self.allowed)
            if text:
                return text
        return "2024"


def paper(rng: random.Random, width: int, height: int, *, lo: int = 215):
    """A light page with a slight tint: (PIL RGB image, its colour)."""
    base = rng.randint(lo, 255)
    tint = tuple(min(255, base + rng.randint(-10, 0)) for _ in range(3))
    return Image.new("RGB", (width, height), tint), tint


def ink(rng: random.Random) -> tuple[int, int, int]:
    """Dark ink: mostly grey-black, sometimes dark blue or dark red."""
    kind = rng.random()
    v = rng.randint(0, 70)
    if kind < 0.8:
        return (v, v, v)
    if kind < 0.9:
        return (v // 2, v // 2, rng.randint(90, 150))
    return (rng.randint(110, 160), v // 3, v // 3)


def measure(draw, text: str, font) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the ink when drawn at the origin."""
    return draw.textbbox((0, 0), text, font=font)


def draw_line(draw, text: str, font, x: int, y: int, fill) -> LabelledLine:
    """Draw `text` with its ink's top-left at (x, y); return it labelled with its ink box."""
    left, top, right, bottom = measure(draw, text, font)
    draw.text((x - left, y - top), text, font=font, fill=fill)
    w, h = right - left, bottom - top
    return LabelledLine(text, [[float(x), float(y)], [float(x + w), float(y)], [float(x + w), float(y + h)],
                               [float(x), float(y + h)]])


def to_bgr(page) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(page)[:, :, ::-1])


def new_draw(page):
    return ImageDraw.Draw(page)
