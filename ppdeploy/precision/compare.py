"""Agreement metrics between a reduced-precision model and its FP32 reference.

Every metric is an *agreement* in [0, 1] (1 = identical to FP32), so the loss of a build is always
`1 - agreement` and `--max-loss 0.005` means "at most half a point", whatever the metric:

- `ctc`: CTC-greedy text of the candidate vs the reference (character accuracy, 1 - normalized edit distance),
  for recognizers whose output is (batch, time, classes) probabilities with blank 0 (PP-OCR rec).
- `top1`: top-1 agreement along the last axis, for classifiers (PP-OCR cls, image classifiers).
- `mask_iou`: IoU of the maps thresholded at 0.3 (DB's binarization threshold), for segmentation-like
  probability maps (PP-OCR det).
- `prob_abs`: 1 - mean absolute difference, for probabilities that are not a distribution (the per-step
  probability of the ctc_greedy head, ppdeploy.graph.heads).
- `rel_l2`: 1 - relative L2 error, for anything else.

`auto` picks one from the reference outputs' shape and range, and from the names of the ctc_greedy head's outputs
(its best-class ids are judged with `ctc`, like the softmax they replace). Task metrics over whole pipelines
(OCR page character accuracy) go through `ppdeploy.precision.gate.TaskGate` instead.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from rapidfuzz.distance import (
    Levenshtein,  # token sequences (lists of ints) work as well as strings
)

from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB

METRICS = ("auto", "ctc", "top1", "mask_iou", "prob_abs", "rel_l2")
MASK_THRESHOLD = 0.3


def _is_distribution(a: np.ndarray) -> bool:
    if a.ndim < 2 or a.shape[-1] < 2 or a.dtype.kind != "f" or a.size == 0:
        return False
    if a.min() < -1e-4 or a.max() > 1 + 1e-4:
        return False
    return bool(np.allclose(a.sum(-1), 1.0, atol=1e-2))


def pick_metric(reference: np.ndarray, name: str | None = None) -> str:
    """The metric `auto` means for an output, judged from the FP32 reference values (and the output's name)."""
    if name == CTC_INDEX:
        return "ctc"
    if name == CTC_PROB:
        return "prob_abs"
    a = np.asarray(reference)
    if _is_distribution(a):
        if a.ndim == 3 and a.shape[-1] >= 20:
            return "ctc"
        return "top1"
    if a.ndim == 4 and a.shape[1] == 1 and a.dtype.kind == "f" and a.size and a.min() >= 0 and a.max() <= 1:
        return "mask_iou"
    return "rel_l2"


def ctc_greedy(probs: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Collapsed label sequences from (batch, time, classes) probabilities, or from (batch, time) best-class ids."""
    probs = np.asarray(probs)
    ids = probs.argmax(-1) if probs.ndim == 3 else probs.astype(np.int64)
    out = []
    for row in ids.reshape(-1, ids.shape[-1]):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        seq = row[keep]
        out.append([int(t) for t in seq if t != blank])
    return out


def _count_agreement(metric: str, ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(agreeing amount, total amount) for one sample, so samples of different sizes weigh fairly."""
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape:
        return 0.0, 1.0
    if not np.all(np.isfinite(cand)):
        return 0.0, 1.0
    if metric == "ctc":
        agree = total = 0.0
        for r, c in zip(ctc_greedy(ref), ctc_greedy(cand)):
            n = max(len(r), 1)
            agree += max(0.0, n - Levenshtein.distance(r, c))
            total += n
        return agree, total
    if metric == "top1":
        r, c = ref.argmax(-1), cand.argmax(-1)
        return float((r == c).sum()), float(r.size)
    if metric == "mask_iou":
        r, c = ref > MASK_THRESHOLD, cand > MASK_THRESHOLD
        union = float((r | c).sum())
        if union == 0:
            return 1.0, 1.0
        return float((r & c).sum()) / union, 1.0
    if metric == "prob_abs":
        return max(0.0, 1.0 - float(np.abs(ref - cand).mean())) if ref.size else 1.0, 1.0
    if metric == "rel_l2":
        denom = max(float(np.linalg.norm(ref)), 1e-12)
        return max(0.0, 1.0 - float(np.linalg.norm(ref - cand)) / denom), 1.0
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


def output_stats(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape:
        return {"shape_mismatch": 1.0}
    diff = np.abs(ref - cand)
    finite = np.isfinite(cand)
    d = diff[finite] if finite.any() else np.array([np.inf])
    rn, cn = np.linalg.norm(ref), np.linalg.norm(np.where(finite, cand, 0))
    cos = float(np.dot(ref.ravel(), np.where(finite, cand, 0).ravel()) / max(rn * cn, 1e-30))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "cosine": cos,
            "nonfinite": float((~finite).sum())}


def agreement(references: Sequence[Mapping[str, np.ndarray]], candidates: Sequence[Mapping[str, np.ndarray]],
              metric: str = "auto") -> dict:
    """Compare per-sample outputs; returns {"agreement": worst output's agreement, "outputs": {...}}."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    names = list(references[0])
    outputs = {}
    for name in names:
        m = pick_metric(references[0][name], name) if metric == "auto" else metric
        agree = total = 0.0
        worst: dict[str, float] = {"max_abs": 0.0, "cosine": 1.0, "nonfinite": 0.0}
        for ref, cand in zip(references, candidates):
            a, t = _count_agreement(m, ref[name], cand[name])
            agree, total = agree + a, total + t
            s = output_stats(ref[name], cand[name])
            if "shape_mismatch" in s:
                worst["shape_mismatch"] = 1.0
                continue
            worst["max_abs"] = max(worst["max_abs"], s["max_abs"])
            worst["cosine"] = min(worst["cosine"], s["cosine"])
            worst["nonfinite"] += s["nonfinite"]
        outputs[name] = {"metric": m, "agreement": agree / total if total else 1.0, **worst}
    return {"agreement": min(o["agreement"] for o in outputs.values()), "outputs": outputs}
