"""Page images for OCR benchmarks: a user folder, or labelled synthetic pages from `ppdeploy.tasks.ocr.synth`
(generated once per seed under the cache), so every run measures the same pixels and, when labels exist,
reports character accuracy next to speed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppdeploy.core.errors import InputError
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.evaluate import list_images
from ppdeploy.tasks.ocr.synth import SynthOptions, generate


@dataclass
class PageSet:
    images: list[Path]
    labels: list | None  # list[LabelledImage] in the same order as images, when the folder is labelled
    source: str


def load_pages(folder: Path) -> PageSet:
    """Images of a folder; with labels (labels.json / Label.txt) they come in the labels' order."""
    folder = Path(folder)
    try:
        labelled = read_labelled_folder(folder)
    except InputError:
        return PageSet(list_images(folder), None, str(folder))
    return PageSet([item.path for item in labelled], labelled, f"{folder} (labelled)")


def synthetic_pages(root: Path, count: int, seed: int = 0) -> PageSet:
    """`count` labelled synthetic document pages for `seed`, generated on first use."""
    if count < 1:
        raise InputError(f"need at least one page, got {count}")
    folder = Path(root) / f"synth-{count}p-seed{seed}"
    if not (folder / "labels.json").is_file():
        generate(folder, SynthOptions(pages=count, seed=seed))
    pages = load_pages(folder)
    pages.source = f"{count} synthetic labelled pages (ppdeploy.tasks.ocr.synth, seed {seed})"
    return pages
