"""Find installed fonts (no font is shipped or downloaded).

CJK fonts come from Debian packages: fonts-wqy-microhei, fonts-wqy-zenhei, fonts-arphic-uming,
fonts-noto-cjk; Latin ones from fonts-dejavu-core and fonts-liberation2. `PPDEPLOY_FONT` overrides the CJK choice.
"""
from __future__ import annotations

import os
import shutil
import subprocess
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
