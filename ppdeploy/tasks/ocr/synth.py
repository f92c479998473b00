"""Synthetic labelled OCR pages: Chinese, English, digits, dates and prices rendered with installed fonts.

Deterministic for a given seed and font set: every random choice comes from one `random.Random(seed)`.
Each page is a small document (receipt / notice / table-like lines) at most `max_side` pixels on its long
side, so detection works at the model's native resolution. Mild degradations: page rotation (+-2 degrees),
Gaussian blur, Gaussian noise, JPEG compression — each on part of the pages; a few pages are upside down.

Ground truth per line: the text and the quadrilateral around its ink (rotated with the page).
Fonts: CJK from fonts-wqy-microhei / fonts-wqy-zenhei / fonts-arphic-uming (any found), Latin from
fonts-dejavu-core / fonts-liberation2. Usage: `ppdeploy eval synth OUT_DIR --pages 10 --seed 0`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.source.zoo import ocr_dictionary
from ppdeploy.tasks.ocr.dataset import LabelledImage, LabelledLine, write_labels_json
from ppdeploy.tasks.ocr.fonts import APT_HINT, cjk_fonts, latin_fonts

cv2 = lazy_import("cv2", install="opencv-python-headless")
Image = lazy_import("PIL.Image", install="pillow")
ImageDraw = lazy_import("PIL.ImageDraw", install="pillow")
ImageFont = lazy_import("PIL.ImageFont", install="pillow")

CHINESE_PHRASES = [
    "发票代码", "发票号码", "开票日期", "校验码", "购买方名称", "纳税人识别号", "地址电话", "开户行及账号",
    "货物或应税劳务名称", "规格型号", "单位", "数量", "单价", "金额", "税率", "税额", "价税合计", "销售方",
    "收款人", "复核", "开票人", "备注", "欢迎光临", "谢谢惠顾", "请妥善保管小票", "会员积分", "实收现金",
    "找零", "合计金额", "优惠券抵扣", "北京市朝阳区建国路八十八号", "上海市浦东新区世纪大道", "广州市天河区体育西路",
    "深圳市南山区科技园", "杭州市西湖区文三路", "成都市高新区天府大道", "会议通知", "各部门负责人",
    "请于本周五下午三点", "在三楼会议室召开工作会议", "讨论年度预算安排", "请准时参加", "办公室", "人力资源部",
    "产品说明书", "使用前请仔细阅读本说明", "储存条件", "阴凉干燥处", "有效期至", "生产日期", "保质期",
    "净含量", "配料表", "营养成分表", "能量", "蛋白质", "脂肪", "碳水化合物", "钠", "联系电话", "客服热线",
    "中华人民共和国", "国家统计局", "经济增长", "科学技术", "人工智能", "深度学习", "文字识别", "图像处理",
    "飞桨开源框架", "模型部署", "推理引擎", "高性能计算", "数据中心", "云计算服务", "订单编号", "收货地址",
    "快递单号", "签收人", "配送时间", "商品名称", "苹果", "香蕉", "牛奶", "面包", "鸡蛋", "大米", "食用油",
]
ENGLISH_PHRASES = [
    "Invoice", "Total Amount", "Subtotal", "Tax", "Thank you for your purchase", "Customer Service",
    "Order Number", "Shipping Address", "Payment Method", "Credit Card", "Cash", "Change", "Quantity",
    "Unit Price", "Description", "Date", "Time", "Receipt", "Store", "Manager", "Meeting Notice",
    "Please arrive on time", "Room", "Floor", "Building", "Street", "Road", "Avenue", "Phone", "Email",
    "Deep learning inference", "Text recognition", "Model deployment", "Open source", "Version",
    "Battery life", "Made in China", "Best before", "Net weight", "Ingredients", "Warning",
]
UNITS = ["元", "件", "个", "箱", "kg", "g", "ml", "pcs"]


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(2015, 2026), rng.randint(1, 12), rng.randint(1, 28)
    style = rng.randrange(4)
    if style == 0:
        return f"{y}年{m}月{d}日"
    if style == 1:
        return f"{y}-{m:02d}-{d:02d}"
    if style == 2:
        return f"{y}/{m:02d}/{d:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    return f"{d:02d}.{m:02d}.{y}"


def _price(rng: random.Random) -> str:
    value = rng.choice([rng.randint(1, 99), rng.randint(100, 9999)]) + rng.randint(0, 99) / 100
    return rng.choice(["¥{:.2f}", "￥{:.2f}", "${:.2f}", "{:.2f}元", "RMB {:,.2f}"]).format(value)


def _digits(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(8, 20)))
    if kind == 1:
        return f"{rng.choice(['138', '139', '150', '186', '010', '021'])}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    return f"No.{rng.randint(10000, 99999999)}"


def make_line(rng: random.Random) -> tuple[str, bool]:
    """One line of text and whether it is mainly Chinese."""
    kind = rng.randrange(7)
    if kind == 0:
        return "".join(rng.sample(CHINESE_PHRASES, rng.randint(1, 3))), True
    if kind == 1:
        return f"{rng.choice(CHINESE_PHRASES)}：{rng.choice([_date(rng), _price(rng), _digits(rng)])}", True
    if kind == 2:
        return " ".join(rng.sample(ENGLISH_PHRASES, rng.randint(1, 3))), False
    if kind == 3:
        return f"{rng.choice(ENGLISH_PHRASES)}: {rng.choice([_date(rng), _price(rng), _digits(rng)])}", False
    if kind == 4:
        return f"{rng.choice(CHINESE_PHRASES)} {rng.randint(1, 50)}{rng.choice(UNITS)} {_price(rng)}", True
    if kind == 5:
        return rng.choice([_date(rng), _price(rng), _digits(rng)]), False
    return f"{rng.choice(CHINESE_PHRASES)}{rng.choice(ENGLISH_PHRASES)}{rng.randint(1, 999)}", True


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


def _allowed_characters() -> set[str] | None:
    try:
        return set(ocr_dictionary().read_text(encoding="utf-8").splitlines()) | {" "}
    except PPDeployError:
        return None


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
    allowed = _allowed_characters()
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
