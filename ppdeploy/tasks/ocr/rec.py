"""Text recognition with a CTC model (PP-OCRv4 rec), as PaddleOCR's `tools/infer/predict_rec.py`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.errors import ConfigError
from ppdeploy.tasks.ocr.textline import fill_batch


@dataclass(frozen=True)
class RecOptions:
    """PaddleOCR's PP-OCRv4 recognition defaults."""

    image_height: int = 48
    image_width: int = 320
    """Minimum batch width; a batch is as wide as its widest crop needs (height x its aspect ratio)."""
    batch_size: int = 6
    """Crops per inference call; crops are sorted by aspect ratio first, so a batch pads little."""
    use_space_char: bool = True
    """The model's last class is a space (PP-OCR's dictionaries are used with it)."""
    dictionary: str | None = None
    """Character list, one per line; None: ppocr_keys_v1.txt of the bundled models."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"rec batch_size must be >= 1, got {self.batch_size}")
        if self.image_height < 8 or self.image_width < 8:
            raise ConfigError(f"rec image size {self.image_height}x{self.image_width} is too small")


def load_characters(dictionary: str | Path | None, use_space_char: bool = True) -> list[str]:
    """CTC classes: index 0 is the blank, then the dictionary lines, then (optionally) a space."""
    if dictionary is None:
        from ppdeploy.zoo import ocr_dictionary

        dictionary = ocr_dictionary()
    path = Path(dictionary)
    if not path.is_file():
        raise ConfigError(f"recognition dictionary not found: {path}")
    chars = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    if use_space_char:
        chars.append(" ")
    return ["blank", *chars]


def ctc_greedy_decode(probs: np.ndarray, characters: list[str]) -> list[tuple[str, float]]:
    """Best path: argmax per step, merge repeats, drop blanks; score = mean probability of the kept steps."""
    best = probs.argmax(axis=2)
    best_prob = np.take_along_axis(probs, best[..., None], axis=2)[..., 0]
    keep = best != 0
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    out = []
    for row in range(best.shape[0]):
        sel = keep[row]
        ids = best[row][sel]
        text = "".join(characters[i] for i in ids)
        score = float(best_prob[row][sel].mean()) if ids.size else 0.0
        out.append((text, score))
    return out


@dataclass
class RecTimings:
    rec_pre: float = 0.0
    rec_infer: float = 0.0
    rec_post: float = 0.0


class TextRecognizer:
    def __init__(self, runner: Any, options: RecOptions | None = None, characters: list[str] | None = None):
        self.runner = runner
        self.options = options or RecOptions()
        self.input_name = runner.io.inputs[0].name
        self.characters = characters or load_characters(self.options.dictionary, self.options.use_space_char)
        classes = runner.io.outputs[0].shape[-1] if runner.io.outputs else None
        if classes is not None and classes != len(self.characters):
            raise ConfigError(
                f"the recognition model predicts {classes} classes but the dictionary gives {len(self.characters)}"
                " (blank + characters + space)",
                hint="pass the dictionary the model was trained with (rec_dictionary=...)",
            )

    def __call__(self, crops: list[np.ndarray]) -> tuple[list[tuple[str, float]], RecTimings]:
        opts = self.options
        timings = RecTimings()
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(ratios, kind="stable")
        for start in range(0, len(crops), opts.batch_size):
            t0 = time.perf_counter()
            idx = order[start:start + opts.batch_size]
            max_ratio = max(opts.image_width / opts.image_height, max(ratios[i] for i in idx))
            width = int(opts.image_height * max_ratio)
            batch = fill_batch([crops[i] for i in idx], opts.image_height, width)
            t1 = time.perf_counter()
            probs = next(iter(self.runner.infer({self.input_name: batch}).values()))
            t2 = time.perf_counter()
            for i, res in zip(idx, ctc_greedy_decode(probs, self.characters)):
                results[i] = res
            t3 = time.perf_counter()
            timings.rec_pre += (t1 - t0) * 1e3
            timings.rec_infer += (t2 - t1) * 1e3
            timings.rec_post += (t3 - t2) * 1e3
        return results, timings
