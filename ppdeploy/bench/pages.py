"""Synthetic document pages for speed benchmarks when the user gives no images.

Pages are rendered with fonts installed from Debian packages (DejaVu, Liberation, WenQuanYi/AR PL for
Chinese) and a fixed seed, so every run measures the same pixels. They are for timing, not accuracy:
`ppdeploy eval ocr` owns the labelled evaluation set.
"""
from __future__ import annotations

import random
from pathlib import Path

from ppdeploy.errors import PPDeployError

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
)


WORDS = ("invoice total amount date order customer address shipping payment due balance account number "
         "quantity price description item subtotal tax discount reference contact phone email").split()
HANZI = "发票日期金额合计客户地址电话数量单价说明税率折扣余额账户编号订单付款到期联系人公司名称备注"


def _fonts() -> list[str]:
    fonts = [f for f in FONT_CANDIDATES if Path(f).is_file()]
    if not fonts:
        raise PPDeployError("no TrueType font found to render benchmark pages",
                            hint="apt-get install fonts-dejavu-core fonts-wqy-microhei, or pass --data DIR with your own images")
    return fonts


def _line(rng: random.Random, cjk: bool) -> str:
    kind = rng.random()
    if cjk and kind < 0.35:
        return "".join(rng.choice(HANZI) for _ in range(rng.randint(4, 14))) + f" {rng.randint(1, 9999)}"
    if kind < 0.55:
        return f"{rng.choice(WORDS).title()}: {rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/20{rng.randint(10, 29)}"
    if kind < 0.7:
        return f"{rng.choice(WORDS).title()} ${rng.randint(1, 99999) / 100:,.2f}"
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize()


def render_pages(out_dir: Path, count: int = 4, seed: int = 0, size: tuple[int, int] = (1240, 1754)) -> list[Path]:
    """Write `count` PNG pages (A4 at 150 dpi by default) with 25-40 text lines each; return their paths."""
    from PIL import Image, ImageDraw, ImageFont

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fonts = _fonts()
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = out_dir / f"page_{i:03d}.png"
        paths.append(path)
        if path.is_file():
            continue
        img = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(img)
        y = rng.randint(60, 120)
        while y < size[1] - 100:
            font_path = rng.choice(fonts)
            cjk = not any(tag in font_path for tag in ("dejavu", "liberation"))
            font = ImageFont.truetype(font_path, rng.randint(20, 34))
            x = rng.randint(60, 200)
            draw.text((x, y), _line(rng, cjk), fill=(rng.randint(0, 60),) * 3, font=font)
            y += rng.randint(55, 100)
        tmp = path.with_suffix(".tmp.png")
        img.save(tmp)
        tmp.replace(path)
    return paths


def list_images(data_dir: Path) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PPDeployError(f"image folder {data_dir} does not exist")
    images = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not images:
        raise PPDeployError(f"no images (png/jpg/bmp/webp/tif) in {data_dir}")
    return images
