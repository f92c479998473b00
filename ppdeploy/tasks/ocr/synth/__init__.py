"""Synthetic labelled OCR data: the original test pages (document.py) and the evaluation suite (suite.py) built
from one generator per kind of image (page.py, line.py, receipt.py, photo.py)."""
from ppdeploy.tasks.ocr.synth.document import SynthOptions, generate, render_page
from ppdeploy.tasks.ocr.synth.suite import (
           SPLITS,
           SUBSETS,
           Subset,
           generate_split,
           generate_subset,
           image_rng,
)
from ppdeploy.tasks.ocr.synth.text import CHINESE_PHRASES, ENGLISH_PHRASES, make_line

__all__ = ["CHINESE_PHRASES", "ENGLISH_PHRASES", "SPLITS", "SUBSETS", "Subset", "SynthOptions", "generate",
           "generate_split", "generate_subset", "image_rng", "make_line", "render_page"]
