"""Till receipts: narrow and long, mostly monospaced, item name on the left and price on the right.

Thermal-paper look: a grey-white roll, faded ink, dashed rules drawn as graphics (not labelled as text), and
mild blur / noise on part of them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ppdeploy.tasks.ocr.dataset import LabelledLine
from ppdeploy.tasks.ocr.synth import text as texts
from ppdeploy.tasks.ocr.synth.canvas import (
    Kit,
    draw_line,
    measure,
    new_draw,
    paper,
    to_bgr,
)
from ppdeploy.tasks.ocr.synth.page import scan_noise

ITEMS = ["苹果", "香蕉", "牛奶", "面包", "鸡蛋", "大米", "食用油", "矿泉水", "酸奶", "饼干", "薯片", "可乐",
         "纸巾", "洗发水", "牙膏", "Coffee", "Green Tea", "Sandwich", "Bagel", "Orange Juice", "Milk 1L"]


@dataclass(frozen=True)
class ReceiptOptions:
    width: tuple[int, int] = (360, 640)
    text_px: tuple[int, int] = (15, 26)
    items: tuple[int, int] = (8, 30)
    mono_fraction: float = 0.7
    blur_fraction: float = 0.3
    noise_fraction: float = 0.4


def _rows(rng: random.Random, kit: Kit, items: tuple[int, int]) -> list[tuple[str, str | None, str]]:
    """(left text, right text or None, alignment) per row; alignment is "c" (centred) or "l"."""
    def clean(t: str) -> str:
        return texts.keep_allowed(t, kit.allowed)

    rows: list[tuple[str, str | None, str]] = [
        (clean(rng.choice(texts.CHINESE_PHRASES[-20:] + ["欢迎光临", "Welcome", "便利店", "超市"])), None, "c"),
        (clean(rng.choice(texts.CHINESE_PHRASES[30:36])), None, "c"),
        (clean(f"{rng.choice(['订单编号', 'Order Number', 'No.'])}: {rng.randint(100000, 99999999)}"), None, "l"),
        (clean(texts.date(rng)), None, "l"),
        ("-", None, "rule"),
    ]
    for _ in range(rng.randint(*items)):
        name = clean(rng.choice(ITEMS))
        qty = rng.randint(1, 9)
        label = clean(f"{name} x{qty}" if rng.random() < 0.5 else name)
        rows.append((label, clean(texts.price(rng)), "l"))
    rows += [("-", None, "rule"),
             (clean(rng.choice(["合计金额", "Total Amount", "价税合计", "Subtotal"])), clean(texts.price(rng)), "l"),
             (clean(rng.choice(["实收现金", "Cash", "Credit Card"])), clean(texts.price(rng)), "l"),
             (clean(rng.choice(["找零", "Change"])), clean(texts.price(rng)), "l"),
             ("-", None, "rule"),
             (clean(rng.choice(["谢谢惠顾", "Thank you for your purchase", "请妥善保管小票"])), None, "c"),
             (clean(f"{rng.choice(['客服热线', 'Phone'])}: {texts.digits(rng)}"), None, "c")]
    return [r for r in rows if r[0]]


def render(rng: random.Random, opts: ReceiptOptions, kit: Kit) -> tuple[np.ndarray, list[LabelledLine]]:
    width = rng.randint(*opts.width)
    size = rng.randint(*opts.text_px)
    rows = _rows(rng, kit, opts.items)
    mono = rng.random() < opts.mono_fraction
    line_gap = int(size * rng.uniform(0.35, 0.9))
    height = int(len(rows) * (size * 1.25 + line_gap) + 4 * size)
    page, _ = paper(rng, width, height, lo=205)
    draw = new_draw(page)
    v = rng.randint(20, 110)  # thermal ink fades
    fill = (v, v, v)
    margin = max(6, int(width * rng.uniform(0.03, 0.07)))
    lines: list[LabelledLine] = []
    y = 2 * size
    for left_text, right_text, align in rows:
        if align == "rule":
            dash = max(3, size // 3)
            for x in range(margin, width - margin, 2 * dash):
                draw.line([(x, y + size // 2), (x + dash, y + size // 2)], fill=fill, width=max(1, size // 12))
            y += size + line_gap
            continue
        font_l = kit.font(kit.pick_face(rng, left_text, mono=mono), size)
        room = width - 2 * margin
        right_w = 0
        if right_text:
            font_r = kit.font(kit.pick_face(rng, right_text, mono=mono), size)
            rl, rt, rr, rb = measure(draw, right_text, font_r)
            right_w = rr - rl
            room -= right_w + 2 * size  # keep a wide gap so the two are separate lines
        text = left_text
        l, t, r, b = measure(draw, text, font_l)
        while r - l > room and len(text) > 1:
            text = text[:-1].rstrip()
            l, t, r, b = measure(draw, text, font_l)
        if text and r - l <= room:
            x = (width - (r - l)) // 2 if align == "c" else margin
            lines.append(draw_line(draw, text, font_l, x, y, fill))
        if right_text:
            lines.append(draw_line(draw, right_text, font_r, width - margin - right_w, y, fill))
        y += size + line_gap
    img = to_bgr(page.crop((0, 0, width, min(height, y + 2 * size))))
    img = scan_noise(img, rng, opts.blur_fraction, opts.noise_fraction)
    return img, lines
