"""Rendered document pages whose layout regions are known, as a COCO folder, for document-layout detectors trained on
CDLA (Chinese academic papers): header, title, text paragraphs, figures with captions, tables with captions,
equations, references and a footer, in one or two columns. Each region's box is the tight box of what was drawn.
Category names are CDLA's, so mAP is computed against the model's own labels by name.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.lazy import lazy_import

Image = lazy_import("PIL.Image", install="pip install pillow")
ImageDraw = lazy_import("PIL.ImageDraw", install="pip install pillow")
ImageFont = lazy_import("PIL.ImageFont", install="pip install pillow")

CDLA_CLASSES = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
                "reference", "equation")
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
HANZI = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
         "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合"
         "还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没"
         "结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路"
         "级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理模型算法实验结果分析研究")
FORMULAS = ("E = mc² + ∑ᵢ αᵢ xᵢ", "f(x) = ∫ g(t) e^{-st} dt", "L = −∑ y log p + λ‖w‖²", "P(A|B) = P(B|A)P(A) / P(B)",
            "σ(z) = 1 / (1 + e^{−z})", "∇J(θ) = (1/m) Xᵀ(Xθ − y)")


def find_font() -> str:
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            return path
    raise PPDeployError("no CJK font found for rendering document pages",
                        hint="apt-get install fonts-wqy-microhei (or fonts-arphic-uming)")


class _Page:
    def __init__(self, rng: random.Random, width: int, height: int, font_path: str):
        self.rng, self.w, self.h, self.font_path = rng, width, height, font_path
        self.img = Image.new("RGB", (width, height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.img)
        self.boxes: list[tuple[str, tuple[float, float, float, float]]] = []
        self._fonts: dict[int, object] = {}

    def font(self, size: int):
        if size not in self._fonts:
            self._fonts[size] = ImageFont.truetype(self.font_path, size)
        return self._fonts[size]

    def words(self, n: int) -> str:
        return "".join(self.rng.choice(HANZI) for _ in range(n))

    def add(self, label: str, box) -> None:
        x1, y1, x2, y2 = box
        if x2 - x1 > 2 and y2 - y1 > 2:
            self.boxes.append((label, (float(x1), float(y1), float(x2), float(y2))))

    def text_lines(self, x: int, y: int, width: int, size: int, lines: int, indent: bool = True,
                   prefix: str = "") -> tuple[float, float, float, float]:
        font = self.font(size)
        per_line = max(4, int(width / size))
        x2, bottom = x, y
        for i in range(lines):
            last = i == lines - 1
            n = per_line - (2 if indent and i == 0 else 0)
            if last:
                n = max(3, int(n * self.rng.uniform(0.3, 0.9)))
            text = (prefix if i == 0 else "") + self.words(n)
            ox = x + (2 * size if indent and i == 0 else 0)
            self.draw.text((ox, y + i * size * 1.6), text, fill=(0, 0, 0), font=font)
            bb = self.draw.textbbox((ox, y + i * size * 1.6), text, font=font)
            x2, bottom = max(x2, bb[2]), max(bottom, bb[3])
        return x, y, x2, bottom

    def figure(self, x: int, y: int, width: int, height: int) -> tuple[int, int, int, int]:
        d, rng = self.draw, self.rng
        d.line([(x + 30, y + 5), (x + 30, y + height - 25), (x + width - 5, y + height - 25)], fill=(0, 0, 0), width=2)
        kind = rng.choice(("bars", "lines", "blocks"))
        if kind == "bars":
            n = rng.randint(4, 9)
            bw = (width - 50) / n
            for i in range(n):
                bh = rng.uniform(0.2, 0.95) * (height - 40)
                color = tuple(rng.randint(40, 200) for _ in range(3))
                d.rectangle([x + 35 + i * bw, y + height - 25 - bh, x + 35 + (i + 0.7) * bw, y + height - 26], fill=color)
        elif kind == "lines":
            for _ in range(rng.randint(1, 3)):
                pts = [(x + 35 + t * (width - 45) / 12, y + 10 + rng.uniform(0, height - 45)) for t in range(13)]
                d.line(pts, fill=tuple(rng.randint(0, 200) for _ in range(3)), width=2)
        else:
            for _ in range(rng.randint(3, 6)):
                bx, by = x + rng.uniform(40, width - 90), y + rng.uniform(10, height - 75)
                d.rectangle([bx, by, bx + 60, by + 35], outline=(0, 0, 0), width=2,
                            fill=tuple(rng.randint(180, 250) for _ in range(3)))
        return x, y, x + width, y + height

    def table(self, x: int, y: int, width: int, rows: int, cols: int, size: int) -> tuple[int, int, int, int]:
        row_h = int(size * 1.8)
        d = self.draw
        for r in range(rows + 1):
            if r in (0, 1, rows) or self.rng.random() < 0.3:
                d.line([(x, y + r * row_h), (x + width, y + r * row_h)], fill=(0, 0, 0), width=2 if r in (0, rows) else 1)
        cw = width / cols
        font = self.font(size)
        for r in range(rows):
            for c in range(cols):
                text = self.words(self.rng.randint(2, 4)) if r == 0 or c == 0 else f"{self.rng.uniform(0, 100):.2f}"
                d.text((x + c * cw + 6, y + r * row_h + 0.3 * size), text, fill=(0, 0, 0), font=font)
        return x, y, x + width, y + rows * row_h


def render_page(rng: random.Random, width: int = 1000, height: int = 1414, font_path: str | None = None):
    """-> (PIL RGB page, [(label, box)])."""
    page = _Page(rng, width, height, font_path or find_font())
    margin = int(width * 0.08)
    size = rng.randint(15, 19)
    # header
    hs = size - 4
    hdr = page.text_lines(margin, int(height * 0.025), int(width * 0.5), hs, 1, indent=False)
    page.draw.line([(margin, hdr[3] + 6), (width - margin, hdr[3] + 6)], fill=(0, 0, 0), width=1)
    page.add("header", hdr)
    y = hdr[3] + 40
    # title
    ts = int(size * rng.uniform(1.6, 2.1))
    tw = rng.randint(8, 18)
    title = page.words(tw)
    font = page.font(ts)
    tb = page.draw.textbbox((0, 0), title, font=font)
    tx = (width - (tb[2] - tb[0])) // 2
    page.draw.text((tx, y), title, fill=(0, 0, 0), font=font)
    page.add("title", page.draw.textbbox((tx, y), title, font=font))
    y = page.draw.textbbox((tx, y), title, font=font)[3] + 40
    two_cols = rng.random() < 0.5
    gutter = 30
    col_w = (width - 2 * margin - gutter) // 2 if two_cols else width - 2 * margin
    columns = [margin, margin + col_w + gutter] if two_cols else [margin]
    bottom_limit = height - int(height * 0.07)
    for cx in columns:
        cy = y
        used_figure = used_table = False
        while True:
            choice = rng.random()
            if choice < 0.12 and not used_figure:
                fh = rng.randint(160, 300)
                if cy + fh + 60 > bottom_limit:
                    break
                fw = int(col_w * rng.uniform(0.6, 0.95))
                fx = cx + (col_w - fw) // 2
                page.add("figure", page.figure(fx, cy, fw, fh))
                cap = page.text_lines(fx, cy + fh + 10, fw, size - 2, 1, indent=False, prefix="图" + str(rng.randint(1, 9)) + " ")
                page.add("figure_caption", cap)
                cy = int(cap[3]) + 30
                used_figure = True
            elif choice < 0.24 and not used_table:
                rows, cols = rng.randint(3, 7), rng.randint(3, 5)
                need = rows * int((size - 2) * 1.8) + 60
                if cy + need > bottom_limit:
                    break
                cap = page.text_lines(cx + 20, cy, col_w - 40, size - 2, 1, indent=False, prefix="表" + str(rng.randint(1, 9)) + " ")
                page.add("table_caption", cap)
                tb = page.table(cx, int(cap[3]) + 10, col_w, rows, cols, size - 2)
                page.add("table", tb)
                cy = tb[3] + 30
                used_table = True
            elif choice < 0.32:
                formula = rng.choice(FORMULAS)
                ef = page.font(size + 2)
                bb = page.draw.textbbox((0, 0), formula, font=ef)
                ex = cx + (col_w - (bb[2] - bb[0])) // 2
                if cy + 50 > bottom_limit:
                    break
                page.draw.text((ex, cy), formula, fill=(0, 0, 0), font=ef)
                page.add("equation", page.draw.textbbox((ex, cy), formula, font=ef))
                cy += int((size + 2) * 1.6) + 25
            elif choice < 0.38:
                n = rng.randint(2, 4)
                if cy + n * size * 1.6 * 2 > bottom_limit:
                    break
                for i in range(n):
                    rb = page.text_lines(cx, cy, col_w, size - 3, rng.randint(1, 2), indent=False, prefix=f"[{i + 1}] ")
                    page.add("reference", rb)
                    cy = int(rb[3]) + 14
                cy += 16
            else:
                lines = rng.randint(2, 8)
                if cy + lines * size * 1.6 > bottom_limit:
                    break
                tb = page.text_lines(cx, cy, col_w, size, lines)
                page.add("text", tb)
                cy = int(tb[3]) + int(size * 1.4)
    # footer: the page number
    number = str(rng.randint(1, 300))
    ff = page.font(size - 3)
    fb = page.draw.textbbox((width // 2, height - int(height * 0.04)), number, font=ff)
    page.draw.text((width // 2, height - int(height * 0.04)), number, fill=(0, 0, 0), font=ff)
    page.add("footer", fb)
    return page.img, page.boxes


def generate(folder: str | Path, count: int, seed: int) -> Path:
    """`count` pages into `folder` (PNG + COCO annotations.json with CDLA's category names)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    font = find_font()
    images, annotations = [], []
    cat = {n: i + 1 for i, n in enumerate(CDLA_CLASSES)}
    for i in range(count):
        img, boxes = render_page(random.Random(seed * 7919 + i), font_path=font)
        name = f"images/page_{seed}_{i:04d}.png"
        img.save(folder / name)
        images.append({"id": i + 1, "file_name": name, "width": img.width, "height": img.height})
        for label, (x1, y1, x2, y2) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat[label],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i, "name": n} for n, i in cat.items()]}
    (folder / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


__all__ = ["CDLA_CLASSES", "find_font", "generate", "render_page"]
