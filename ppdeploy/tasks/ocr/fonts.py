"""Find installed fonts (no font is shipped or downloaded).

CJK fonts come from Debian packages: fonts-wqy-microhei, fonts-wqy-zenhei, fonts-arphic-uming,
fonts-noto-cjk; Latin ones from fonts-dejavu-core and fonts-liberation2. `PPDEPLOY_FONT` overrides the CJK choice.

`cjk_fonts` / `latin_fonts` are short fixed lists (the original synthetic pages depend on their order);
`font_faces` is every installed face (each face of a .ttc, every weight and slant) for varied evaluation sets.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CJK_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
)
LATIN_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)
APT_HINT = "apt-get install fonts-wqy-microhei (or fonts-noto-cjk), or set PPDEPLOY_FONT to a .ttf/.ttc with Chinese glyphs"


def cjk_fonts() -> list[Path]:
    """Every installed font file known to cover Chinese, best first."""
    found: list[Path] = []
    env = os.environ.get("PPDEPLOY_FONT")
    if env and Path(env).is_file():
        found.append(Path(env))
    found += [Path(p) for p in CJK_CANDIDATES if Path(p).is_file()]
    if not found and shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
            found += sorted({Path(line.split(":")[0].strip()) for line in out.splitlines() if line.strip()})
        except (OSError, subprocess.SubprocessError):
            pass
    return list(dict.fromkeys(found))


def latin_fonts() -> list[Path]:
    return [Path(p) for p in LATIN_CANDIDATES if Path(p).is_file()]


def find_cjk_font() -> Path | None:
    fonts = cjk_fonts()
    return fonts[0] if fonts else None


SKIP_FAMILIES = ("Math",)  # symbol / math faces: no running text


@dataclass(frozen=True)
class FontFace:
    """One face of an installed font file (a .ttc holds several; `index` picks one)."""

    path: Path
    index: int
    family: str
    style: str
    cjk: bool  # covers Simplified Chinese (fontconfig lang zh-cn)

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


@lru_cache(maxsize=1)
def font_faces() -> tuple[FontFace, ...]:
    """Every installed face fontconfig knows, sorted by (path, index) so a seeded choice is reproducible on
    machines with the same fonts. Without fc-list: the fixed CJK and Latin lists, face 0 of each."""
    faces: list[FontFace] = []
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", "--format", "%{file}\t%{index}\t%{family[0]}\t%{style[0]}\t%{lang}\n"],
                                 capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for row in out.splitlines():
            parts = row.split("\t")
            if len(parts) != 5 or not parts[0].lower().endswith((".ttf", ".ttc", ".otf", ".otc")):
                continue
            path, index, family, style, langs = parts
            if any(skip in family for skip in SKIP_FAMILIES):
                continue
            faces.append(FontFace(Path(path), int(index or 0), family, style, "zh-cn" in langs.split("|")))
    if not faces:
        faces = [FontFace(p, 0, p.stem, "", True) for p in cjk_fonts()]
        faces += [FontFace(p, 0, p.stem, "", False) for p in latin_fonts()]
    return tuple(sorted(set(faces), key=lambda f: (str(f.path), f.index)))
