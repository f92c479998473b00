"""Synthetic labelled OCR pages: Chinese, English, digits, dates and prices rendered with installed fonts.

Deterministic for a given seed and font set: every random choice comes from one `random.Random(seed)`.
Each page is a small document (receipt / notice / table-like lines) at most `max_side` pixels on its long
side, so detection works at the model's native resolution. Mild degradations: page rotation (+-2 degrees),
Gaussian blur, Gaussian noise, JPEG compression — each on part of the pages; a few pages are upside down.

Ground truth per line: the text and the quadrilateral around its ink (rotated with the page).
Fonts: CJK from fonts-wqy-microhei / fonts-wqy-zenhei / fonts-arphic-uming (any found), Latin from
fonts-dejavu-core / fonts-liberation2. Usage: `ppdeploy eval synth OUT_DIR --pages 10 --seed 0`.
This is the set the project's tests and gates were built on; its output must not change (seeded tests pin it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.dataset import LabelledImage, LabelledLine, write_labels_json
from ppdeploy.tasks.ocr.fonts import APT_HINT, cjk_fonts, latin_fonts
from ppdeploy.tasks.ocr.synth.text import allowed_characters, make_line

cv2 = lazy_import("cv2", install="opencv-python-headless")
Image = lazy_import("PIL.Image", install="pillow")
ImageDraw = lazy_import("PIL.ImageDraw", install="pillow")
ImageFont = lazy_import("PIL.ImageFont", install="pillow")


@dataclass(frozen=True)
class SynthOptions:
    pages: int = 10
    seed: int = 0
    max_side: int = 960
    min_font_px: int = 14
    max_font_px: int = 34
    rotate_degrees: float = 2.0
    blur_fraction: float = 0.3
    noise_fraction: float = 0.3
    jpeg_fraction: float = 0.3
    upside_down_fraction: float = 0.1  # pages turned 180 degrees: only the direction classifier reads them


def _load_fonts():
    cjk = cjk_fonts()
    if not cjk:
        raise PPDeployError("no CJK font is installed; the synthetic set needs one", hint=APT_HINT)
    latin = latin_fonts()
    return cjk, cjk + latin, ImageFont


def render_page(rng: random.Random, opts: SynthOptions, cjk_fonts, all_fonts, image_font, allowed):
    """-> (BGR uint8 image, [LabelledLine])."""
    width = rng.randint(560, opts.max_side)
    height = rng.randint(int(opts.max_side * 0.6), opts.max_side)
    bg = rng.randint(225, 255)
    tint = [min(255, bg + rng.randint(-8, 0)) for _ in range(3)]
    page = Image.new("RGB", (width, height), tuple(tint))
    draw = ImageDraw.Draw(page)
    lines: list[LabelledLine] = []
    y = rng.randint(15, 40)
    while True:
        text, _ = make_line(rng)
        if allowed is not None:
            text = "".join(ch for ch in text if ch in allowed)
        text = text.strip()
        needs_cjk = any(ord(ch) > 0x2000 for ch in text)  # dates with 年, the full-width ￥, CJK punctuation
        size = rng.randint(opts.min_font_px, opts.max_font_px)
        font_path = rng.choice(cjk_fonts if needs_cjk else all_fonts)
        font = image_font.truetype(str(font_path), size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if y + (bottom - top) + 20 > height:
            break
        max_x = width - (right - left) - 15
        if max_x < 15 or not text:
            y += size // 2
            continue
        x = rng.randint(15, min(max_x, 15 + width // 3))
        ink = rng.randint(0, 70)
        draw.text((x - left, y - top), text, font=font, fill=(ink, ink, ink))
        box = [[x, y], [x + right - left, y], [x + right - left, y + bottom - top], [x, y + bottom - top]]
        lines.append(LabelledLine(text, [[float(a), float(b)] for a, b in box]))
        y += (bottom - top) + rng.randint(int(size * 0.6), int(size * 1.4))
    img = np.asarray(page)[:, :, ::-1].copy()

    angle = rng.uniform(-opts.rotate_degrees, opts.rotate_degrees)
    if rng.random() < opts.upside_down_fraction:
        angle += 180.0
    if abs(angle) > 0.05:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        img = cv2.warpAffine(img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=tuple(tint[::-1]))
        for line in lines:
            pts = np.hstack([np.array(line.box), np.ones((4, 1))]) @ matrix.T
            line.box = pts.tolist()
    if rng.random() < opts.blur_fraction:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.8))
    if rng.random() < opts.noise_fraction:
        noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(2, 6), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, lines


def generate(out_dir: str | Path, options: SynthOptions | None = None) -> list[LabelledImage]:
    """Write `options.pages` pages plus labels.json into out_dir; return the labelled images."""
    opts = options or SynthOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cjk, all_fonts, image_font = _load_fonts()
    allowed = allowed_characters()
    rng = random.Random(opts.seed)
    images = []
    for i in range(opts.pages):
        img, lines = render_page(rng, opts, cjk, all_fonts, image_font, allowed)
        if rng.random() < opts.jpeg_fraction:
            path = out / f"page_{i:03d}.jpg"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(75, 95)])
        else:
            path = out / f"page_{i:03d}.png"
            cv2.imwrite(str(path), img)
        images.append(LabelledImage(path, lines))
    write_labels_json(out, images)
    return images
