"""The OCR evaluation suite: named subsets of generated pages, in two splits that never share an image.

- `tune`: what detector defaults may be chosen on (ppdeploy.bench.ocr_defaults sweeps on it).
- `heldout`: what the chosen defaults are confirmed on; nothing is tuned on it.

Every image has its own generator `random.Random("ppdeploy-ocr-eval/<split>/<subset>/<index>")` (string seeds
are hashed with SHA-512 by Python, the same on every machine), so the two splits are disjoint by construction,
adding a subset or an image changes no other image, and a folder is regenerated identically on demand: nothing is
committed. The same fonts must be installed for identical images (fonts.font_faces lists all installed faces).

Subsets (kind: what it stresses):
  pages-small   page     400-640 px pages, 12-32 px text
  pages-medium  page     800-1280 px pages, 14-34 px text (the size of typical independent test pages)
  pages-large   page     2000-4000 px scans, 28-80 px text
  text-tiny     page     1000-4000 px pages, 8-13 px text in 1-3 columns
  text-huge     page     400-1200 px pages, 44-80 px text (signs, slides, posters)
  dense         page     1200-1800 px pages, 10-16 px text in 2-3 tight columns (small print)
  lines         line     single-line images, 10-64 px text
  receipts      receipt  narrow (360-640 px) and long till receipts, 15-26 px text
  photos        photo    photographed pages: perspective, uneven light, blur, noise, JPEG
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.dataset import LabelledImage, write_labels_json
from ppdeploy.tasks.ocr.synth import line, page, photo, receipt
from ppdeploy.tasks.ocr.synth.canvas import Kit

cv2 = lazy_import("cv2", install="opencv-python-headless")

SPLITS = ("tune", "heldout")
SEED_PREFIX = "ppdeploy-ocr-eval"
SUITE_VERSION = 1  # bump when a generator's output changes, so cached folders are rebuilt


@dataclass(frozen=True)
class Subset:
    name: str
    kind: str
    options: Any
    images: int = 10
    jpeg_fraction: float = 0.3  # stored as JPEG (quality 60-92) instead of PNG; photos are always JPEG


RENDERERS: dict[str, Callable] = {"page": page.render, "line": line.render, "receipt": receipt.render,
                                  "photo": photo.render}

SUBSETS: tuple[Subset, ...] = (
    Subset("pages-small", "page", page.PageOptions(width=(400, 640), aspect=(0.7, 1.5), text_px=(12, 32), chunks=2)),
    Subset("pages-medium", "page", page.PageOptions(width=(800, 1280), text_px=(14, 34))),
    Subset("pages-large", "page", page.PageOptions(width=(2000, 4000), text_px=(28, 80))),
    Subset("text-tiny", "page", page.PageOptions(width=(1000, 4000), aspect=(0.6, 1.2), text_px=(8, 13),
                                                 spacing=(0.6, 2.5), columns=(1, 2, 3), max_lines=50), images=8),
    Subset("text-huge", "page", page.PageOptions(width=(400, 1200), aspect=(0.6, 1.4), text_px=(44, 80), chunks=2,
                                                 spread=0.1)),
    Subset("dense", "page", page.PageOptions(width=(1200, 1800), text_px=(10, 16), spacing=(0.15, 0.5),
                                             columns=(2, 3), chunks=2, max_lines=80), images=8),
    Subset("lines", "line", line.LineOptions(), images=15),
    Subset("receipts", "receipt", receipt.ReceiptOptions()),
    Subset("photos", "photo", photo.PhotoOptions(), jpeg_fraction=1.0),
)


def subset(name: str) -> Subset:
    for s in SUBSETS:
        if s.name == name:
            return s
    raise ConfigError(f"unknown evaluation subset {name!r}", hint=f"choose from {', '.join(s.name for s in SUBSETS)}")


def image_rng(split: str, subset_name: str, index: int) -> random.Random:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}", hint=f"choose from {', '.join(SPLITS)}")
    return random.Random(f"{SEED_PREFIX}/{split}/{subset_name}/{index}")


def _fingerprint(split: str, s: Subset, images: int) -> str:
    spec = {"version": SUITE_VERSION, "split": split, "subset": s.name, "kind": s.kind, "images": images,
            "jpeg": s.jpeg_fraction, "options": asdict(s.options)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generate_subset(out_dir: str | Path, split: str, s: Subset, *, images: int | None = None,
                    kit: Kit | None = None) -> Path:
    """Write the subset's images and labels.json into out_dir (reused when already generated with the same
    spec); return out_dir."""
    n = s.images if images is None else images
    out = Path(out_dir)
    stamp = out / "suite.json"
    fingerprint = _fingerprint(split, s, n)
    if (out / "labels.json").is_file() and stamp.is_file() and \
            json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return out
    out.mkdir(parents=True, exist_ok=True)
    kit = kit or Kit.load()
    render = RENDERERS[s.kind]
    items = []
    for i in range(n):
        rng = image_rng(split, s.name, i)
        img, lines = render(rng, s.options, kit)
        if rng.random() < s.jpeg_fraction:
            path = out / f"{s.name}_{i:03d}.jpg"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(60, 92)])
        else:
            path = out / f"{s.name}_{i:03d}.png"
            cv2.imwrite(str(path), img)
        items.append(LabelledImage(path, lines))
    write_labels_json(out, items)
    stamp.write_text(json.dumps({"split": split, "subset": s.name, "images": n, "fingerprint": fingerprint}))
    return out


def generate_split(root: str | Path, split: str, *, subsets: list[str] | None = None,
                   images: int | None = None) -> dict[str, Path]:
    """Generate (or reuse) every subset of `split` under root/<split>/<subset>; -> {subset name: folder}."""
    chosen = [subset(n) for n in subsets] if subsets else list(SUBSETS)
    kit = Kit.load()
    return {s.name: generate_subset(Path(root) / split / s.name, split, s, images=images, kit=kit) for s in chosen}
