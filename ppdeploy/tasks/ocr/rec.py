"""Text recognition with a CTC model (PP-OCRv4 rec), as PaddleOCR's `tools/infer/predict_rec.py`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB
from ppdeploy.source.zoo import ocr_dictionary
from ppdeploy.tasks.ocr.guard import DEFAULT_MARGIN, MAX_MARGIN, best_path
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
    max_width: int = 3200
    """Widest batch: a line that would need more (height x its aspect ratio) is squeezed to it, so one unusually
    long line is still read (PaddleX's max_img_w). Lowered to the model's own limit: its fixed width, or the max of
    its shape profile."""
    dictionary: str | None = None
    """Character list, one per line; None: ppocr_keys_v1.txt of the bundled models."""
    guard_margin: float = DEFAULT_MARGIN
    """With a guard model (a reduced-precision rec checked by an FP32 one, see ppdeploy.tasks.ocr.guard), a line is
    read again by the guard when a class whose probability is at least exp(-guard_margin) times the best's would
    change its text (a log-ratio margin). 0 disables."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"rec batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.guard_margin <= MAX_MARGIN:
            raise ConfigError(f"rec guard_margin (a log-ratio) must be within [0, {MAX_MARGIN:g}], got "
                              f"{self.guard_margin}")
        if self.image_height < 8 or self.image_width < 8:
            raise ConfigError(f"rec image size {self.image_height}x{self.image_width} is too small")
        if self.max_width < self.image_width:
            raise ConfigError(f"rec max_width {self.max_width} is below image_width {self.image_width}")


def load_characters(dictionary: str | Path | None, use_space_char: bool = True) -> list[str]:
    """CTC classes: index 0 is the blank, then the dictionary lines, then (optionally) a space."""
    if dictionary is None:
        dictionary = ocr_dictionary()
    path = Path(dictionary)
    if not path.is_file():
        raise ConfigError(f"recognition dictionary not found: {path}")
    chars = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    if use_space_char:
        chars.append(" ")
    return ["blank", *chars]


def ctc_greedy_decode(probs: np.ndarray, characters: list[str]) -> list[tuple[str, float]]:
    """Best path from the N x T x classes probabilities: argmax per step, then `ctc_best_path_decode`."""
    return ctc_best_path_decode(*best_path(probs), characters)


def ctc_best_path_decode(best: np.ndarray, best_prob: np.ndarray, characters: list[str]) -> list[tuple[str, float]]:
    """N x T best classes and their probabilities -> (text, score) per row: repeats merged, blanks dropped, score =
    mean probability of the kept steps. This is all a model with the ctc_greedy head (ppdeploy.graph.heads) returns."""
    if best.size and int(best.max()) >= len(characters):
        raise ConfigError(f"the recognition model predicted class {int(best.max())} but the dictionary has "
                          f"{len(characters)} classes (blank + characters + space)",
                          hint="pass the dictionary the model was trained with (rec_dictionary=...)")
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


def has_greedy_head(runner: Any) -> bool:
    """Whether the runner's outputs are those of the ctc_greedy head (best class and probability per step)."""
    return [t.name for t in getattr(runner.io, "outputs", ())] == [CTC_INDEX, CTC_PROB]


@dataclass
class RecTimings:
    rec_pre: float = 0.0
    rec_infer: float = 0.0
    rec_post: float = 0.0
    rec_guard: float = 0.0
    """Time the guard model spent re-reading unsure lines (not counted in rec_infer)."""
    guard_lines: int = 0
    """Lines the guard read again."""


class TextRecognizer:
    """Crops -> (text, score) per crop. `runner` returns either the N x T x classes probabilities or, with the
    ctc_greedy head (ppdeploy.graph.heads), the best class and its probability per step. It may be a
    GuardedRecRunner (see ppdeploy.tasks.ocr.guard); its re-reads are then reported apart (rec_guard, guard_lines)."""

    def __init__(self, runner: Any, options: RecOptions | None = None, characters: list[str] | None = None):
        self.runner = runner
        self.options = options or RecOptions()
        self.input_name = runner.io.inputs[0].name
        self.characters = characters or load_characters(self.options.dictionary, self.options.use_space_char)
        self.greedy_head = has_greedy_head(runner)
        self.min_width, self.max_width = width_range(runner, self.options)
        classes = getattr(runner, "classes", None)  # a GuardedRecRunner's softmax, behind its ctc_greedy outputs
        if classes is None and runner.io.outputs and not self.greedy_head:
            classes = runner.io.outputs[0].shape[-1]
        if classes is not None and classes != len(self.characters):
            raise ConfigError(
                f"the recognition model predicts {classes} classes but the dictionary gives {len(self.characters)}"
                " (blank + characters + space)",
                hint="pass the dictionary the model was trained with (rec_dictionary=...)",
            )

    def __call__(self, crops: list[np.ndarray]) -> tuple[list[tuple[str, float]], RecTimings]:
        timings = RecTimings()
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for idx, width in self._batches(crops):  # one batch at a time: a page of long lines stays small in memory
            decoded = self.read_batch([crops[i] for i in idx], width, timings)
            for i, res in zip(idx, decoded):
                results[i] = res
        return results, timings

    def read_batch(self, crops: list[np.ndarray], width: int, timings: RecTimings) -> list[tuple[str, float]]:
        """One inference call: `crops` padded to `width` (as `plan` decided), (text, score) per crop; its
        milliseconds and guard re-reads are added to `timings`."""
        t0 = time.perf_counter()
        batch = fill_batch(crops, self.options.image_height, width)
        t1 = time.perf_counter()
        out = self.runner.infer({self.input_name: batch})
        guard_ms = getattr(self.runner, "last_guard_ms", 0.0)
        t2 = time.perf_counter()
        if CTC_INDEX in out:  # by name, per call: a runner swapped in place (bench.optimize) may change outputs
            decoded = ctc_best_path_decode(out[CTC_INDEX], out[CTC_PROB], self.characters)
        else:
            decoded = ctc_greedy_decode(next(iter(out.values())), self.characters)
        timings.rec_pre += (t1 - t0) * 1e3
        timings.rec_infer += (t2 - t1) * 1e3 - guard_ms
        timings.rec_guard += guard_ms
        timings.guard_lines += getattr(self.runner, "last_guard_rows", 0)
        timings.rec_post += (time.perf_counter() - t2) * 1e3
        return decoded

    def plan(self, crops: list[np.ndarray]) -> list[tuple[list[int], int]]:
        """The batches `__call__` reads `crops` in: (crop indices, batch width) each. A crop's text depends on the
        width it is padded to, so the throughput mode, which merges batches of several pages, merges only batches
        of equal width (ppdeploy.tasks.ocr.throughput)."""
        return self._batches(crops)

    def _batches(self, crops: list[np.ndarray]) -> list[tuple[list[int], int]]:
        """PaddleOCR's batches: crops sorted by aspect ratio, `batch_size` at a time, each batch padded to the width
        its widest member needs (at least image_width, at most max_width: wider members are squeezed to it)."""
        opts = self.options
        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(ratios, kind="stable").tolist()
        batches = []
        for start in range(0, len(order), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            max_ratio = max(opts.image_width / opts.image_height, max(ratios[i] for i in idx))
            width = int(opts.image_height * max_ratio)
            batches.append((idx, min(self.max_width, max(self.min_width, width))))
        return batches


def width_range(runner: Any, options: RecOptions) -> tuple[int, int]:
    """(narrowest, widest) batch width `runner` takes: its fixed width (both), else options.image_width ..
    options.max_width narrowed to its shape profile's range, when it has one."""
    spec = runner.io.inputs[0]
    fixed = spec.shape[3] if len(spec.shape) == 4 else None
    if fixed is not None:
        return fixed, fixed
    lo, hi = options.image_width, options.max_width
    shapes = getattr(runner, "shapes", None)
    profile = shapes.ranges.get(spec.name) if shapes else None
    if profile is not None and len(profile.max) == 4:
        hi = min(hi, profile.max[3])
        lo = min(max(lo, profile.min[3]), hi)
    return lo, hi
