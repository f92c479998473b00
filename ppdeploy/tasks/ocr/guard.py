"""The rec guard: a reduced-precision recognizer whose unsure lines are read again at full precision.

BF16 or INT8 rec is about twice as fast as FP32 on a CPU with avx512_bf16/VNNI, but changes the text of a few
lines in a hundred (measured: 17 of 747 and 24 of 749 synthetic lines for BF16 on OpenVINO). Those lines are the ones
where the model hesitates: at some step two classes are close, and taking the other one changes the text.
`uncertain_rows` finds them in the fast model's own output; `GuardedRecRunner` re-runs just those rows through an FP32
copy of the model and keeps its answer. The rows are re-run exactly as the fast model saw them (same batch width, same
padding): padding changes the model's output, and a hesitant line is precisely one it can tip over.

"Close" is a log-ratio: a class is an alternative at a step when its probability is at least exp(-margin) times the
best's. Reduced precision perturbs logits, so it moves the ratio of two probabilities, not their difference. Measured
on two tuning sets of synthetic pages (seeds 7000/7100 and 7200/7300, 1496 lines, BF16 changed 41), re-reading what
each criterion flags:

| criterion | lines re-read | their total width | lines left different from FP32 |
|---|---:|---:|---:|
| log-ratio 0.5, between characters 0.35 (default) | 169 (11.3 %) | 112 k px | 2 |
| log-ratio 0.45, between characters 0.315 | 159 | 106 k | 3 |
| log-ratio 0.35, between characters 0.245 | 118 | 78 k | 8 |
| log-ratio 0.5 for every pair | 192 | 124 k | 2 |
| log-ratio 0.35 for every pair | 140 | 93 k | 6 |
| probability difference 0.3 (the first criterion) | 246 | 157 k | 2 |
| probability difference 0.2 | 161 | 105 k | 5 |

so the log-ratio re-reads 21 % less than the difference for the same lines, and holding character-for-character
swaps to 0.7 of the margin (CHAR_SWAP_FACTOR) 10 % less again; the re-reads are most of the guard's cost.

INT8 (NNCF on OpenVINO) is another matter: it changes about a fifth of the lines, often confidently (a character
dropped with a wide margin), and the error is in the compute ops themselves (quantizing only convolutions and
MatMuls changed as many lines as NNCF's default). Measured with the log-ratio criterion on 193 lines of 12 synthetic
pages (FP32 det and cls), unguarded 80.8 % identical to FP32:

| margin | lines re-read | lines identical to FP32 |
|---:|---:|---:|
| 0.5 | 14 % | 88.6 % |
| 1.0 | 29 % | 95.9 % |
| 2.0 | 54 % | 100 % |
| 3.0 | 82 % | 100 % |

So OCR guards INT8 rec by default with margin 2.0 (ppdeploy.tasks.ocr.builder GUARD_MARGINS): the lines hold, and
the re-reads cost about half an FP32 pass, which INT8 pays for only where its rec is well over twice as fast as FP32
(CPUs with VNNI/AMX); where it is not, OCR runs rec at FP32 (the measured engine speed, ppdeploy.deploy.speed).
"""
from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.tensors import IOSpec, TensorSpec
from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB

DEFAULT_MARGIN = 0.5
MAX_MARGIN = 10.0  # a log-ratio: exp(-10) makes nearly every class an alternative
# One character read as another is held to this fraction of the margin; a step that may turn blank (or a blank that
# may turn into a character) to the whole margin. BF16 moves the log-ratio of two characters about half as much as
# that of a character and the blank: 90th percentile 0.26 against 0.55-0.60, over 1633 close step pairs of the
# tuning sets. With 0.7 the guard re-reads 169 lines (112 k px) instead of 192 (124 k px), leaving the same 2 of
# 1496 different from FP32 (1 in each set).
CHAR_SWAP_FACTOR = 0.7


def _collapse(path: np.ndarray) -> tuple[int, ...]:
    prev = np.concatenate(([-1], path[:-1]))
    return tuple(path[(path != prev) & (path != 0)].tolist())


MAX_SWAP_COMBINATIONS = 64


def _is_softmax(probs: np.ndarray) -> bool:
    """Whether the model's last op is a softmax, judged on the first step of each row (a B x classes slice, not the
    whole B x steps x classes output, which is megabytes per batch)."""
    first = probs[:, 0, :]
    return bool(first.min() >= -1e-4 and np.abs(first.sum(axis=1) - 1.0).max() < 1e-3)


def _as_probabilities(out: np.ndarray) -> np.ndarray:
    if _is_softmax(out):
        return out
    e = np.exp(out - out.max(axis=2, keepdims=True))  # logits, not probabilities: judge on their softmax
    return e / e.sum(axis=2, keepdims=True)


def best_path(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N x T best classes and their probabilities (what the ctc_greedy head returns)."""
    best = probs.argmax(axis=2)
    return best, np.take_along_axis(probs, best[..., None], axis=2)[..., 0]


def uncertain_rows(probs: np.ndarray, margin: float, path: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
    """Rows whose greedy CTC text could change if the ratio of the blank's and a character's probabilities moved by up
    to a factor exp(margin), or that of two characters by up to exp(CHAR_SWAP_FACTOR * margin).

    At each step, the classes whose probability is at least exp(-margin) (between characters: exp(-0.7 margin)) times
    the best's are its plausible alternatives. A row is uncertain when some choice of alternatives (several steps may
    flip together) gives a different collapsed text; flips that only move a blank inside a run of the same character
    change nothing and do not count. Only steps whose best probability is below 1 / (1 + exp(-margin)) can have an alternative, since a
    softmax's runner-up is at most 1 - best; that keeps the check cheap on 6625 classes. Rows with more than
    MAX_SWAP_COMBINATIONS choices count as uncertain. `path`: best_path(probs), when the caller has it already; `probs`
    must then be probabilities (logits are judged as their softmax only when `path` is None).
    """
    if margin <= 0:
        return []
    if path is None:
        probs = _as_probabilities(probs)
        path = best_path(probs)
    best, best_p = path
    ratio = float(np.exp(-margin))  # against the blank (class 0)
    char_ratio = float(np.exp(-margin * CHAR_SWAP_FACTOR))  # one character against another
    rows = []
    for row in range(probs.shape[0]):
        steps = np.flatnonzero(best_p[row] < 1.0 / (1.0 + ratio))
        if steps.size == 0:
            continue
        step_best, step_p = best[row, steps], best_p[row, steps]
        candidates = probs[row, steps]
        near = candidates >= (step_p * char_ratio)[:, None]
        loose = (step_best == 0)[:, None] | (np.arange(candidates.shape[1]) == 0)[None, :]
        near |= loose & (candidates >= (step_p * ratio)[:, None])
        near[np.arange(steps.size), step_best] = False
        choices = [(int(t), np.flatnonzero(near[k]).tolist()) for k, t in enumerate(steps) if near[k].any()]
        if not choices:
            continue
        if np.prod([1 + len(alts) for _, alts in choices]) > MAX_SWAP_COMBINATIONS:
            rows.append(row)
            continue
        row_path = best[row]
        text = _collapse(row_path)
        for combo in itertools.product(*[[int(row_path[t]), *alts] for t, alts in choices]):
            swapped = row_path.copy()
            swapped[[t for t, _ in choices]] = combo
            if _collapse(swapped) != text:
                rows.append(row)
                break
    return rows


class GuardedRecRunner:
    """Runner-like: `fast` answers, and the rows it is unsure of (by `margin`) are answered by `guard` instead.

    Both must be the same rec model (same classes) returning its softmax; `guard` at full precision. It returns what
    the ctc_greedy head would (ppdeploy.graph.heads): the best class and its probability per step, so the fast
    model's softmax (tens of MB per batch of long lines) is read once, here, and never copied or patched; it is
    borrowed from the fast runner where the backend allows (Runner.infer_borrowed). `last_guard_rows` and
    `last_guard_ms` tell what the last call re-read; `guarded_rows` counts them over the runner's life.
    """

    def __init__(self, fast: Any, guard: Any, margin: float = DEFAULT_MARGIN):
        if any(t.name == CTC_INDEX for r in (fast, guard) for t in getattr(r.io, "outputs", ())):
            raise ConfigError("the rec guard needs rec models that return their softmax, not the ctc_greedy head")
        self.fast, self.guard, self.margin = fast, guard, margin
        self.backend = getattr(fast, "backend", "?")
        self.last_guard_rows = 0
        self.last_guard_ms = 0.0
        self.last_guard_row_ids: list[int] = []  # which rows of the last call were re-read
        self.guarded_rows = 0
        steps = tuple(fast.io.outputs[0].shape[:2]) if fast.io.outputs else (None, None)
        self.classes = fast.io.outputs[0].shape[-1] if fast.io.outputs else None  # for the dictionary check
        self._io = IOSpec(fast.io.inputs, (TensorSpec(CTC_INDEX, "int64", steps), TensorSpec(CTC_PROB, "float32", steps)))
        self._fast_infer = getattr(fast, "infer_borrowed", fast.infer)

    @property
    def io(self):
        return self._io

    @property
    def shapes(self):
        """The fast model's input profile (the one its inputs must fit)."""
        return getattr(self.fast, "shapes", None)

    @property
    def last_timings(self):
        return self.fast.last_timings

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probs = _as_probabilities(next(iter(self._fast_infer(feeds).values())))
        best, best_p = path = best_path(probs)
        rows = uncertain_rows(probs, self.margin, path)
        del probs  # possibly the fast runner's own buffer: not to be read after its next call
        self.last_guard_rows, self.last_guard_ms, self.last_guard_row_ids = len(rows), 0.0, rows
        if rows:
            start = time.perf_counter()
            again = self.guard.infer({k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()})
            best[rows], best_p[rows] = best_path(_as_probabilities(next(iter(again.values()))))
            self.last_guard_ms = (time.perf_counter() - start) * 1e3
            self.guarded_rows += len(rows)
        return {CTC_INDEX: best, CTC_PROB: best_p}

    def close(self) -> None:
        """The wrapped runners belong to whoever made them; nothing to release here."""
